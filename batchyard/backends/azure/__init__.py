"""The azure backend: the azure-batch SDK against Azure Batch or the emulator."""
