"""The files pushed to every host. Installed as cnd_fab.remote; see worker.py."""
