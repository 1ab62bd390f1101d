"""Real services for the tests, each started in a temporary folder on a free local port and stopped by the test
that started it: a PostgreSQL server (Debian's postgresql) and a one-node SLURM cluster (slurm-wlm, munge).
`make test` installs the packages; where they or root are missing, `unavailable` says why and the test skips."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PG_ROOT = Path("/usr/lib/postgresql")  # Debian: /usr/lib/postgresql/<version>/bin
PG_USER = "adamrun"  # the database's superuser, password-protected over TCP


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pg_bin() -> Path | None:
    found = sorted(PG_ROOT.glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


def unavailable_postgres() -> str | None:
    """Why a PostgreSQL server cannot be started here, or None."""
    if pg_bin() is None:
        return "PostgreSQL is not installed (make test installs Debian's postgresql)"
    if os.geteuid() != 0:
        return (
            "starting PostgreSQL needs root (the server runs as the postgres user, which root can switch to)"
        )
    return None


def as_postgres(*argv: str | Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", *map(str, argv)], check=True,
                          capture_output=True, text=True, timeout=120, **kwargs)  # fmt: skip


@contextmanager
def postgres(password: str) -> Iterator[str]:
    """A PostgreSQL server of its own (initdb in a temporary folder, a free port on 127.0.0.1, the password
    required over TCP), stopped at the end: its URL without the password."""
    bin_dir, owner = pg_bin(), pwd.getpwnam("postgres")
    folder = Path(tempfile.mkdtemp(prefix="adamrun-pg-"))
    os.chown(folder, owner.pw_uid, owner.pw_gid)
    password_file = folder / "password"
    password_file.write_text(password + "\n")
    os.chown(password_file, owner.pw_uid, owner.pw_gid)
    data, port = folder / "data", free_port()
    try:
        as_postgres(bin_dir / "initdb", "-D", data, "-U", PG_USER, f"--pwfile={password_file}",
                    "--auth-host=scram-sha-256", "--auth-local=trust")  # fmt: skip
        password_file.unlink()
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
        as_postgres(bin_dir / "pg_ctl", "-D", data, "-w", "-l", folder / "server.log", "-o", options, "start")
        try:
            yield f"postgresql://{PG_USER}@127.0.0.1:{port}/postgres"
        finally:  # the server of this data folder (its postmaster.pid), and it alone
            as_postgres(bin_dir / "pg_ctl", "-D", data, "-w", "-m", "fast", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def create_database(url: str, password: str, name: str) -> str:
    """A new database on the server at `url`: its URL (still without the password)."""
    host_port = url.split("@", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")
    subprocess.run([str(pg_bin() / "createdb"), "-h", host, "-p", port, "-U", PG_USER, name], check=True,
                   env=os.environ | {"PGPASSWORD": password}, capture_output=True, timeout=60)  # fmt: skip
    return f"postgresql://{PG_USER}@{host_port}/{name}"


# ------------------------------------------------------------------------------------------ SLURM
SLURM_PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "scancel", "squeue", "sinfo")
SBIN = ("/usr/sbin", "/usr/bin")  # where Debian puts them (root's PATH may lack /usr/sbin)
SLURM_CONF = """\
ClusterName=adamrun
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={folder}/munge.sock
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
PropagatePrioProcess=1
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""  # PropagatePrioProcess: a job keeps the nice value of its submitter (the suite runs niced)
NODE_CPUS = 2


def program(name: str) -> str | None:
    return shutil.which(name) or next((f"{d}/{name}" for d in SBIN if Path(d, name).is_file()), None)


def unavailable_slurm() -> str | None:
    """Why a one-node SLURM cluster cannot be started here, or None."""
    missing = [name for name in SLURM_PROGRAMS if program(name) is None]
    if missing:
        return (
            f"SLURM is not installed ({', '.join(missing)} missing; make test installs slurm-wlm and munge)"
        )
    if os.geteuid() != 0:
        return "a one-node SLURM cluster needs root (munged, slurmctld and slurmd run as root here)"
    return None


def wait_for(ready, processes: list[subprocess.Popen], what: str, limit_s: float = 60) -> None:
    """Poll until ready() holds, every daemon still running meanwhile (else its output says why)."""
    import time

    deadline = time.monotonic() + limit_s
    while not ready():
        dead = [p for p in processes if p.poll() is not None]
        assert not dead and time.monotonic() < deadline, f"{what}: {[p.args[0] for p in dead]} stopped"
        time.sleep(0.1)


def squeue(env: dict) -> list[str]:
    found = subprocess.run([program("squeue"), "-h", "-o", "%i"], env=env, capture_output=True, text=True)
    return found.stdout.split()


@contextmanager
def slurm_cluster() -> Iterator[dict[str, str]]:
    """munged, slurmctld and slurmd on this machine, from a slurm.conf in a temporary folder (free ports, one
    node of NODE_CPUS CPUs, proctrack/linuxproc, task/none, no accounting): the environment its clients
    (sbatch, scancel, submitit) need. At the end its jobs are cancelled and the three daemons stopped."""
    folder = Path(tempfile.mkdtemp(prefix="adamrun-slurm-"))
    (folder / "state").mkdir()
    (folder / "spool").mkdir()
    conf = folder / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=socket.gethostname().split(".")[0], ctld_port=free_port(),
                                      d_port=free_port(), folder=folder, cpus=NODE_CPUS))  # fmt: skip
    env = os.environ | {"SLURM_CONF": str(conf), "PATH": f"{os.environ.get('PATH', '')}:{':'.join(SBIN)}"}
    subprocess.run([program("mungekey"), "-c", "-k", folder / "munge.key"], check=True, capture_output=True)
    (folder / "munge.key").chmod(0o600)
    daemons: list[subprocess.Popen] = []

    def start(*argv) -> None:
        log = open(folder / f"{Path(argv[0]).name}.out", "w")  # noqa: SIM115 - closed with the folder
        daemons.append(
            subprocess.Popen([str(a) for a in argv], stdout=log, stderr=subprocess.STDOUT, env=env)
        )

    try:
        start(program("munged"), "-F", "--force", f"--socket={folder}/munge.sock", f"--key-file={folder}/munge.key",
              f"--pid-file={folder}/munged.pid", f"--log-file={folder}/munged.log", f"--seed-file={folder}/munged.seed")  # fmt: skip
        wait_for(lambda: (folder / "munge.sock").exists(), daemons, "munged")
        start(program("slurmctld"), "-D", "-f", conf)
        start(program("slurmd"), "-D", "-f", conf)
        idle = lambda: subprocess.run([program("sinfo"), "-h", "-o", "%T"], env=env, capture_output=True,  # noqa: E731
                                      text=True).stdout.strip() == "idle"  # fmt: skip
        wait_for(idle, daemons, "the SLURM node")
        yield env
    finally:
        if len(daemons) == 3:  # its jobs first: slurmd's job steps outlive slurmd
            subprocess.run([program("scancel"), "--full", *squeue(env)], env=env, capture_output=True)
            wait_for(lambda: not squeue(env), daemons, "the cluster's jobs")
        for daemon in reversed(daemons):
            daemon.terminate()
            daemon.wait(timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
