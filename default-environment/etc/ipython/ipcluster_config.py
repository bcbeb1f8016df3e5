"""hubstack: ipyparallel clusters started with the default environment.

IPython reads this file from {sys.prefix}/etc/ipython for every ``ipp.Cluster`` (and
``ipcluster``) run with this environment's python; a user's own
~/.ipython/profile_default/ipcluster_config.py overrides any setting here.
"""

import os
import shutil

c = get_config()  # noqa: F821 (provided by the config loader)

# With Slurm available, engines are Slurm jobs of the notebook's user by default, so that
# parallel work runs on the cluster's CPUs, not on the hub machine or inside the notebook's
# own allocation. ipp.Cluster(engines="local") still starts engines next to the kernel.
if shutil.which("sbatch"):
    c.Cluster.engine_launcher_class = "slurm"

# Engines may wait in the queue; give them this long (seconds) to start and register.
c.Cluster.engine_timeout = 300

# One single-CPU job per engine (a job array): engines start as soon as any CPU is free and
# never need a whole node, and without srun the notebook's own job settings (SLURM_* in its
# environment) cannot leak into the engines' steps. {program_and_args} runs this
# environment's python, which must be at the same path on the compute nodes.
# A notebook running in a Slurm job passes its partition and account on to its engines.
# These #SBATCH lines are defaults: SBATCH_TIMELIMIT, SBATCH_MEM_PER_NODE, SBATCH_PARTITION
# or SBATCH_ACCOUNT set in the kernel's environment override them (sbatch's precedence).
sbatch = [
    "--job-name=ipengine-{cluster_id}",
    "--array=1-{n}",
    "--ntasks=1",
    "--cpus-per-task=1",
    "--time=1:00:00",
    "--output={output_file}",
    "--open-mode=append",
]
inherited = {"--partition": "SLURM_JOB_PARTITION", "--account": "SLURM_JOB_ACCOUNT"}
for option, variable in inherited.items():
    if os.environ.get(variable):
        sbatch.append(f"{option}={os.environ[variable]}")
c.SlurmEngineSetLauncher.batch_template = "\n".join(
    ["#!/bin/sh", *(f"#SBATCH {line}" for line in sbatch), "exec {program_and_args}", ""]
)
