"""The service user attacks root through state_dir (issue 9, case 4).

With `user:` set, the appliance hands state_dir to that user; between two starts the user
controls what lies there. The old drop chowned every entry, following links: plant
`state_dir/x -> /etc/shadow` and the next start hands you the shadow file. Here the target is
a root-owned `secret` of the test's own (never the real /etc/shadow); the user is `nobody`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidus_appliance.lab import Lab
from sidus_appliance.runtime import LEASES_FILE

from ..conftest import StartAppliance
from . import checks

pytestmark = pytest.mark.integration

NOBODY = pwd.getpwnam("nobody")
SERVICE_USER = {"user": "nobody"}
SECRET_TEXT = "root:$y$j9T$not-a-real-hash:19700:0:99999:7:::\n"


@pytest.fixture
def workdir() -> Iterator[Path]:
    """The appliance's workdir, reachable by nobody (pytest's tmp dirs are 0700), with a
    state_dir owned by nobody, as the first run with `user: nobody` leaves it, and a
    root-only secret beside it. Requested before start_appliance: removed after the
    appliance has stopped."""
    path = Path(tempfile.mkdtemp(prefix="sidus-privdrop-"))
    try:
        path.chmod(0o755)
        state = path / "state"
        state.mkdir(mode=0o755)
        os.chown(state, NOBODY.pw_uid, NOBODY.pw_gid)
        secret = path / "secret"
        secret.write_text(SECRET_TEXT)
        secret.chmod(0o600)
        yield path
    finally:
        shutil.rmtree(path)


def owner(path: Path) -> tuple[int, int]:
    info = os.stat(path, follow_symlinks=False)
    return info.st_uid, info.st_gid


def assert_secret_intact(workdir: Path) -> None:
    secret = workdir / "secret"
    assert owner(secret) == (0, 0), "root handed the secret to the service user"
    assert secret.read_text() == SECRET_TEXT
    assert secret.stat().st_mode & 0o777 == 0o600


def test_links_planted_in_state_dir_are_never_followed(
    lab: Lab, workdir: Path, start_appliance: StartAppliance, tmp_path: Path
) -> None:
    state, secret = workdir / "state", workdir / "secret"
    (state / "x").symlink_to(secret)  # the attack
    os.link(secret, state / "y")  # the same inode under another name
    appliance = start_appliance(SERVICE_USER, workdir=workdir)
    appliance.wait_log("dropped privileges to nobody")
    assert f"Uid:\t{NOBODY.pw_uid}\t{NOBODY.pw_uid}\t{NOBODY.pw_uid}\t{NOBODY.pw_uid}" in Path(
        f"/proc/{appliance.pid}/status"
    ).read_text()
    assert appliance.stop() == 0
    assert_secret_intact(workdir)
    assert owner(state / "x") == (0, 0) and owner(state / "y") == (0, 0)  # neither the link nor the name
    for ours in (state, state / LEASES_FILE, state / (LEASES_FILE + ".lock")):
        assert owner(ours) == (NOBODY.pw_uid, NOBODY.pw_gid), ours

    appliance = start_appliance(SERVICE_USER, workdir=workdir)  # a second start over the same state
    checks.assert_still_serves(lab, appliance, tmp_path / "after")
    assert_secret_intact(workdir)


@pytest.mark.parametrize(
    ("plant", "refusal"),
    [
        (lambda journal, secret: os.link(secret, journal), "has 2 hard links"),
        (lambda journal, secret: journal.symlink_to(secret), "is a symbolic link"),
    ],
    ids=["hard-link", "symlink"],
)
def test_a_journal_that_is_another_file_is_refused(
    lab: Lab, workdir: Path, start_appliance: StartAppliance, tmp_path: Path, plant, refusal: str
) -> None:
    journal = workdir / "state" / LEASES_FILE
    plant(journal, workdir / "secret")
    with pytest.raises(RuntimeError) as caught:
        start_appliance(SERVICE_USER, workdir=workdir)
    log = str(caught.value)
    assert "appliance exited with 2" in log, log
    assert f"state_dir: {journal} {refusal}" in log, log
    assert "Traceback" not in log, log
    assert_secret_intact(workdir)
    assert owner(workdir / "state") == (NOBODY.pw_uid, NOBODY.pw_gid)  # given back as it was

    journal.unlink()  # the administrator removes what the message names; the next start works
    appliance = start_appliance(SERVICE_USER, workdir=workdir)
    checks.assert_still_serves(lab, appliance, tmp_path / "after")
    assert_secret_intact(workdir)
