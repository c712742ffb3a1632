"""What runs on a node (a local worker, an emulated node, a Batch node): the task runner and its parts.

It imports core and storage only: no backend, no dispatcher.
"""
