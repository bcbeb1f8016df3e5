"""Slurm itself, as the hub talks to it: the client of its commands, the one watcher of
all jobs, and the job script a server's start becomes."""
