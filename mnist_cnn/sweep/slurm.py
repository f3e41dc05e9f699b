"""Before a sweep submits its jobs to Slurm (`hydra/launcher=slurm`): Slurm's commands are here, its
controller answers, and some node of the partition can hold what each job asks for. Slurm accepts
a request no node can meet and leaves it pending for ever (reason `PartitionConfig`), while the
sweep waits; this says which key to lower instead, before the parent run opens."""

import shutil
import subprocess
from typing import List, Optional, Tuple

from omegaconf import DictConfig

COMMANDS = ("sbatch", "srun", "sinfo")  # submitit submits with sbatch and starts each job with srun
ELSEWHERE = "use hydra/launcher=submitit_local or hydra/launcher=joblib to run the jobs on this machine"


def slurm_problem(launcher: DictConfig) -> Optional[str]:
    """What would keep a Slurm sweep's jobs from ever running, or None (also for other launchers)."""
    if not str(launcher.get("_target_", "")).endswith("SlurmLauncher"):
        return None
    missing = [command for command in COMMANDS if shutil.which(command) is None]
    if missing:
        return (
            f"hydra/launcher=slurm submits the jobs to Slurm, but {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not on PATH here; run the "
            f"sweep where Slurm is installed (a login node), or {ELSEWHERE}."
        )
    nodes, error = _partition_nodes(launcher.partition)
    where = f"partition {launcher.partition!r}" if launcher.partition else "the cluster's default partition"
    if error:
        return f"Slurm did not answer `sinfo` ({error}); check that its controller runs here, or {ELSEWHERE}."
    if not nodes:
        return f"Slurm has no {where}; set hydra.launcher.partition to one that `sinfo` lists."
    cpus = (launcher.cpus_per_task or 1) * launcher.tasks_per_node
    most_cpus, most_mb = max(c for c, _ in nodes), max(m for _, m in nodes)
    if cpus > most_cpus:
        return (
            f"hydra.launcher.cpus_per_task={launcher.cpus_per_task} (times tasks_per_node={launcher.tasks_per_node}) "
            f"asks for {cpus} CPUs, but no node of {where} has more than {most_cpus}; the jobs would never start. "
            f"Lower hydra.launcher.cpus_per_task to {most_cpus // launcher.tasks_per_node} or less."
        )
    if launcher.mem_gb and launcher.mem_gb * 1024 > most_mb:
        return (
            f"hydra.launcher.mem_gb={launcher.mem_gb} asks for {launcher.mem_gb * 1024} MB, but no node of {where} "
            f"has more than {most_mb} MB; the jobs would never start. Lower hydra.launcher.mem_gb to "
            f"{most_mb // 1024} or less."
        )
    return None


def _partition_nodes(partition: Optional[str]) -> Tuple[List[Tuple[int, int]], Optional[str]]:
    """(CPUs, memory in MB) of each node of `partition` (None: the default one, which sinfo marks
    with `*`), or the error sinfo gave."""
    try:
        out = subprocess.run(
            ["sinfo", "--noheader", "--Node", "--format=%P %c %m"], capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        return [], "no answer within 20 s"
    if out.returncode != 0:
        return [], (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]
    nodes = []
    for line in out.stdout.splitlines():
        name, cpus, memory = line.split()
        if (name.rstrip("*") == partition) if partition else name.endswith("*"):
            nodes.append((int(cpus.rstrip("+")), int(memory.rstrip("+"))))
    return nodes, None
