"""The local backend: tasks on an Azure Storage queue, run by worker processes, results in a table."""
