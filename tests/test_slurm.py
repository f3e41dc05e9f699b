"""A Slurm sweep is checked before it submits anything: Slurm's commands, its controller, and a
request that some node of the partition can hold (else the jobs would pend for ever)."""

import os
import stat

import pytest
import yaml
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from omegaconf import OmegaConf

from mnist_cnn.config.tree import CONF_DIR
from mnist_cnn.sweep.slurm import slurm_problem
from tests.helpers import processes

NODES = "debug* 2 1990\nbig 64 256000\nbig 32 128000\n"  # sinfo --Node --format='%P %c %m': one line per node


def fake_slurm(folder, sinfo_output=NODES, sinfo_exit=0, commands=("sbatch", "srun", "sinfo")):
    """A folder of stand-ins for Slurm's commands: sinfo prints `sinfo_output` (to stderr when it
    fails); the others must not run."""
    folder.mkdir()
    for command in commands:
        redirect = " >&2" if sinfo_exit else ""
        body = f"printf '{sinfo_output}'{redirect}\nexit {sinfo_exit}" if command == "sinfo" else "exit 99"
        (folder / command).write_text(f"#!/bin/sh\n{body}\n")
        (folder / command).chmod(stat.S_IRWXU)
    return str(folder)


def launcher(**keys):
    """hydra/launcher=slurm as the project configures it (submitit's schema, then conf/hydra/launcher/slurm.yaml)."""
    ours = yaml.safe_load((CONF_DIR / "hydra" / "launcher" / "slurm.yaml").read_text())
    del ours["defaults"]
    return OmegaConf.merge(OmegaConf.structured(SlurmQueueConf), ours, {"partition": None}, keys)


def test_other_launchers_are_not_checked():
    assert (
        slurm_problem(OmegaConf.create({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}))
        is None
    )


def test_slurm_commands_missing_from_path_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", fake_slurm(tmp_path / "bin", commands=("sinfo",)))
    assert slurm_problem(launcher()).startswith(
        "hydra/launcher=slurm submits the jobs to Slurm, but sbatch and srun are not on PATH here; run the sweep "
        "where Slurm is installed (a login node), or use hydra/launcher=submitit_local"
    )


def test_a_controller_that_does_not_answer_is_named_with_sinfos_words(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", fake_slurm(tmp_path / "bin", "sinfo: error: Unable to contact slurm controller", 1))
    assert slurm_problem(launcher()).startswith(
        "Slurm did not answer `sinfo` (sinfo: error: Unable to contact slurm controller); check that its controller"
    )


@pytest.mark.parametrize(
    "keys,problem",
    [
        (
            {},
            "hydra.launcher.cpus_per_task=4 (times tasks_per_node=1) asks for 4 CPUs, but no node of the cluster's "
            "default partition has more than 2; the jobs would never start. Lower hydra.launcher.cpus_per_task to 2 "
            "or less.",
        ),
        (
            {"cpus_per_task": 2},
            "hydra.launcher.mem_gb=8 asks for 8192 MB, but no node of the cluster's default partition has more than "
            "1990 MB; the jobs would never start. Lower hydra.launcher.mem_gb to 1 or less.",
        ),
        ({"cpus_per_task": 2, "mem_gb": 1}, None),
        ({"partition": "big", "cpus_per_task": 64}, None),  # the largest node of the partition counts
        ({"partition": "big", "cpus_per_task": 33, "tasks_per_node": 2}, "asks for 66 CPUs, but no node of partition "),
        ({"partition": "gpu"}, "Slurm has no partition 'gpu'; set hydra.launcher.partition to one that `sinfo` lists."),
    ],
)
def test_a_request_no_node_of_the_partition_can_hold_names_the_key_to_lower(tmp_path, monkeypatch, keys, problem):
    monkeypatch.setenv("PATH", fake_slurm(tmp_path / "bin"))
    found = slurm_problem(launcher(**keys))
    assert found == problem or (problem is not None and found is not None and problem in found), found


def test_a_slurm_sweep_that_could_never_start_is_one_line_exit_2_before_its_parent_opens(tiny_root, tmp_path):
    """The whole command: hydra/launcher=slurm with its defaults (4 CPUs) on a partition of 2-CPU nodes."""
    store = tmp_path / "mlflow.db"
    env = {"PATH": fake_slurm(tmp_path / "bin") + os.pathsep + os.environ["PATH"]}
    command = processes.train_command(
        tiny_root, f"sqlite:///{store}", "hydra/launcher=slurm", "seed=1,2", multirun=True
    )
    out = processes.run(command, tmp_path, env=env)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "mnist-cnn-train: hydra.launcher.cpus_per_task=4 (times tasks_per_node=1) asks for 4 CPUs, but no node of "
        "the cluster's default partition has more than 2; the jobs would never start. Lower "
        "hydra.launcher.cpus_per_task to 2 or less."
    ]
    assert not store.exists() and not (tmp_path / "multirun").exists()
