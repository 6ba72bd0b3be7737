"""The files pushed to every host: worker.py (protocol codec and search) and kernel/."""
