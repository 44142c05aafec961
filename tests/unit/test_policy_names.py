"""The names of the policies a host knows are listed once per change of their directory, not
once per launch (a launch asks for them once per policy its tclet may be granted), and a
policy added to or removed from the directory is seen from then on."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tcletd.policy import known_policies

POLICY = '[connect]\nallow = ["localhost 8080"]\n'


def test_the_names_are_listed_again_only_when_their_directory_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "alpha.toml").write_text(POLICY)
    settled = time.time() - 10  # as an operator's directory is: last changed a while ago
    os.utime(tmp_path, (settled, settled))
    listings: list[Path] = []
    glob = Path.glob

    def counted(self: Path, pattern: str) -> object:
        listings.append(self)
        return glob(self, pattern)

    monkeypatch.setattr(Path, "glob", counted)
    for _ in range(4):
        assert "alpha" in known_policies(tmp_path)
    mine = [p for p in listings if p == tmp_path]
    assert len(mine) == 1, listings

    (tmp_path / "beta.toml").write_text(POLICY)  # the directory's time moves on
    assert {"alpha", "beta"} <= set(known_policies(tmp_path))
    (tmp_path / "alpha.toml").unlink()
    assert "alpha" not in known_policies(tmp_path)

    # A directory changed within the second is listed each time: its modification time could
    # still be the one a file added next leaves it with (the kernel's clock for it is coarse).
    now = time.time()
    os.utime(tmp_path, (now, now))
    assert "gamma" not in known_policies(tmp_path)
    (tmp_path / "gamma.toml").write_text(POLICY)
    os.utime(tmp_path, (now, now))  # added in the same tick: the time did not move
    assert "gamma" in known_policies(tmp_path)
