"""The top-level Vagrantfile (a controller and three hosts provisioned by deploy/install.sh) passes
`vagrant validate` (Debian's vagrant; no provider or box needed to validate)."""

from __future__ import annotations

import shutil

import pytest

from tests.machines.nspawn import REPO, run


def test_vagrant_validates_the_vagrantfile(tmp_path):
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.fail("needs vagrant: `make test-machines` installs it (apt: vagrant)")
    shutil.copy(REPO / "Vagrantfile", tmp_path / "Vagrantfile")  # vagrant writes .vagrant/ beside it
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "VAGRANT_HOME": str(tmp_path / "vagrant.d")}
    out = run(vagrant, "validate", "--ignore-provider", cwd=tmp_path, env=env, timeout=120)
    assert "Vagrantfile validated successfully." in out.stdout
    text = (REPO / "Vagrantfile").read_text()
    assert 'backend = name == "h3" ? "userspace" : "auto"' in text
    assert text.count("sh /vagrant/deploy/install.sh") == 2  # the controller and each host
