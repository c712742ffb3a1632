"""Local emulators batchyard runs against.

``batchyard.emulator.azurite`` installs, starts, reuses and stops Azurite (the Azure
Storage emulator) on loopback; see ``docs/azurite.md``. Import from the submodule
directly: this package does not import it eagerly, so that
``python -m batchyard.emulator.azurite`` runs without a double-import warning.
"""
