"""Where a search's study lives (`tune.storage`), and the one password it may need.

- `sqlite` (the default): `<sweep_dir>/study.db`, with Optuna's heartbeats; right for one machine, unsafe on a
  network filesystem (sqlite's locks are not reliable there).
- `journal`: Optuna's journal file, `<sweep_dir>/study.journal`, appended under a lock file: safe on a shared
  network filesystem, no server. It has no heartbeats: a trial whose worker died is found by its free trial
  lock (runner/tune.py).
- any database URL Optuna takes, without a password: `postgresql://adamrun@db.example:5432/adamrun` (the
  one tested here), `mysql+pymysql://...`. Heartbeats as with sqlite.

The URL is saved in tune.json and in every trial's config.yaml, and a command line is visible to every user of
the machine (`ps`), so a URL holding a password is refused. The password comes from the environment
(`ADAMRUN_DB_PASSWORD`) or from the first line of the file `tune.password_file` names, and goes only into the
URL handed to SQLAlchemy; `scrub` takes it out of any message that reaches a row, a log or an error.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from omegaconf import DictConfig

from runner.errors import UsageError

PASSWORD_ENV = "ADAMRUN_DB_PASSWORD"
FILES = {"sqlite": "study.db", "journal": "study.journal"}  # storages kept in the sweep folder
HIDDEN = "***"
MAX_RETRIES = 3  # runs of a trial whose worker died, after the first: a trial that kills every worker stops
_secrets: set[str] = set()  # the passwords this process has read: never shown


def check_storage(storage: str, password_file: str | None) -> None:
    """tune.storage's value, checked when the config is composed: a name of FILES or a URL without a
    password. The message never repeats the URL, which may hold one."""
    if storage in FILES:
        if password_file is not None:
            raise UsageError(f"tune.password_file is for a database URL; tune.storage={storage} takes none")
        return
    url = parsed(storage)
    if url.password is not None:
        raise UsageError(
            "tune.storage holds a password, and it would be saved in tune.json and each trial's config.yaml: "
            f"give the URL without it, and the password in ${PASSWORD_ENV} or tune.password_file"
        )


def parsed(storage: str):
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(storage)
    except (ArgumentError, ValueError) as err:  # neither names the URL
        choices = ", ".join(FILES)
        raise UsageError(f"tune.storage must be {choices} or a database URL ({err})") from None


def password(password_file: str | None) -> str | None:
    """The database password: tune.password_file's first line, else $ADAMRUN_DB_PASSWORD, else none (a
    server that trusts the user, or libpq's own ~/.pgpass)."""
    if password_file is not None:
        path = Path(password_file).expanduser()
        try:
            secret = path.read_text().splitlines()[0].strip() if path.stat().st_size else ""
        except OSError as err:
            raise UsageError(f"tune.password_file {path}: {err.strerror}") from None
        if not secret:
            raise UsageError(f"tune.password_file {path} is empty")
    else:
        secret = os.environ.get(PASSWORD_ENV) or None
    if secret:
        _secrets.add(secret)
    return secret


def scrub(text: str) -> str:
    """`text` without any password this process has read."""
    for secret in _secrets:
        text = text.replace(secret, HIDDEN)
    return text


def scrubbed(err: BaseException) -> BaseException:
    """The same error, its message scrubbed (SQLAlchemy's and a driver's messages may hold the URL)."""
    if _secrets and any(secret in str(err) for secret in _secrets):
        err.args = (scrub(str(err)),)
    return err


def where(settings: DictConfig, folder: Path) -> str:
    """Where the study lives, as a user may be told (never with the password)."""
    if settings.storage in FILES:
        return str(folder / FILES[settings.storage])
    return parsed(settings.storage).render_as_string(hide_password=True)


def open_storage(settings: DictConfig, folder: Path):
    """Optuna's storage for the search in `folder`: sqlite, journal, or the database URL with its password."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

    if settings.storage == "journal":
        path = str(folder / FILES["journal"])
        return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    if settings.storage == "sqlite":
        url = f"sqlite:///{folder / FILES['sqlite']}"
    else:
        secret = password(settings.password_file)
        url = parsed(settings.storage).set(password=secret).render_as_string(hide_password=False)
    return optuna.storages.RDBStorage(
        url,
        heartbeat_interval=settings.heartbeat_s,
        grace_period=settings.grace_s,
        heartbeat_stale_trial_callback=retry(),
    )


def retry():
    """Optuna's callback that queues a dead trial again: its parameters and user attributes (adamrun's trial
    number among them), with the number of the trial it retries."""
    import optuna

    return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)


def dashboard_command(settings: DictConfig, folder: Path) -> str:
    """The one command that opens optuna-dashboard on the study (pip install 'adamrun[dashboard]'); for a
    PostgreSQL URL, libpq reads the password from $PGPASSWORD, never from the command line."""
    if settings.storage == "journal":
        return f"optuna-dashboard {shlex.quote(where(settings, folder))}"  # it takes a journal file's path
    if settings.storage == "sqlite":
        return f"optuna-dashboard {shlex.quote('sqlite:///' + where(settings, folder))}"
    command = f"optuna-dashboard {shlex.quote(where(settings, folder))}"
    if parsed(settings.storage).get_backend_name() != "postgresql":
        return command
    source = (
        f"${PASSWORD_ENV}"
        if settings.password_file is None
        else f"$(head -1 {shlex.quote(settings.password_file)})"
    )
    return f'PGPASSWORD="{source}" {command}'
