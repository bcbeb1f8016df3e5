"""hubstack: the ipyparallel controller of clusters started with the default environment.

IPython reads this file from {sys.prefix}/etc/ipython for every controller run with this
environment's python.
"""

c = get_config()  # noqa: F821 (provided by the config loader)

# Listen on all interfaces, so that engines running as Slurm jobs on other nodes can connect.
# They find the controller by this machine's hostname (IPController.location, default
# socket.gethostname()); every message is signed with the cluster's key, kept in the user's
# profile. The client in the notebook, on this machine, connects over loopback.
c.IPController.ip = "*"
