"""The elastic cluster: Slurm's power saving decides when nodes are needed; this room turns
that into nodes a provider creates and deletes, and keeps the records that show it."""
