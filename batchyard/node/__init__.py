"""What runs on a node (the local backend's, an emulated one, a Batch node): the task runner and its parts.

It imports core and storage only: no backend, no dispatcher.
"""
