"""The host side of the kernel tier: Debian's kernel (`linux-image-amd64`, fetched with
`apt-get download`, unpacked, depmod'ed and cached under /var/cache/wgmesh-test/kernel/VERSION), a
read-only ext4 image of the Python this run uses (interpreter prefix, virtualenv, checkout), and the
virtme-ng command that boots the kernel once under qemu's software emulation with the host's
filesystem as the VM's root.

Why an image: the VM's root is a 9p share, where every `stat` and `read` is a round trip through the
emulated virtio device; Python's start-up (thousands of lookups on sys.path) is dominated by it. The
guest script (guest.sh) mounts the image and binds its trees over the same paths, so the VM runs the
checkout and virtualenv exactly as they are at boot, from a block device with a page cache.
Byte-code is compiled on the host first: the guest cannot write it.
"""

from __future__ import annotations

import compileall
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CACHE = Path("/var/cache/wgmesh-test/kernel")
ROOT = Path(__file__).resolve().parents[2]
GUEST_SCRIPT = Path(__file__).with_name("guest.sh")
HOST_TOOLS = ("qemu-system-x86_64", "busybox", "depmod", "udevadm", "mke2fs")
APT_HINT = "apt-get install qemu-system-x86 busybox-static kmod udev (`make test-kernel` does it)"
STDLIB = Path(sys.base_prefix, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}")
# Not needed inside the VM: the interpreter's own tests, packages and build files, and caches.
STDLIB_SKIPPED = {
    "test",
    "idlelib",
    "site-packages",
    f"config-{sys.version_info[0]}.{sys.version_info[1]}-x86_64-linux-gnu",
}
SKIPPED = {".git", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis"}


@dataclass(frozen=True)
class Kernel:
    version: str  # e.g. 6.1.0-57-amd64
    root: Path  # the unpacked package: ROOT/boot/vmlinuz-VERSION, ROOT/lib/modules/VERSION

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.version}"


def missing() -> str | None:
    """Why this machine cannot boot the tier's VM, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (qemu, the VM's namespaces); run `make test` as root"
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    absent = [t for t in HOST_TOOLS if shutil.which(t, path=path) is None]
    if absent:
        return f"needs {', '.join(absent)}: {APT_HINT}"
    if shutil.which("vng", path=str(Path(sys.executable).parent)) is None:
        return "needs virtme-ng in the virtualenv (`make venv` installs it)"
    return None


def _apt_kernel_package() -> str | None:
    """The versioned package `linux-image-amd64` depends on (None: apt does not know it)."""
    out = subprocess.run(
        ["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True, check=False
    ).stdout
    m = re.search(r"Depends: (linux-image-\S+-amd64)", out)
    return m.group(1) if m else None


def kernel(cache: Path = CACHE) -> Kernel:
    """Debian's current amd64 kernel, unpacked in `cache` (downloaded on first use; a cached one is
    used when apt cannot be asked)."""
    package = _apt_kernel_package()
    if package is None:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False, timeout=300)
        package = _apt_kernel_package()
    if package is None:
        cached = sorted(p for p in cache.glob("*-amd64") if (p / "boot").is_dir())
        if not cached:
            raise RuntimeError("apt knows no linux-image-amd64 and no kernel is cached in " + str(cache))
        return Kernel(cached[-1].name, cached[-1])
    version = package.removeprefix("linux-image-")
    found = Kernel(version, cache / version)
    if found.vmlinuz.exists() and (found.root / "lib/modules" / version / "modules.dep").exists():
        return found
    cache.mkdir(parents=True, exist_ok=True)
    work = cache / f"{version}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    run = {"capture_output": True, "text": True, "check": True, "timeout": 600}
    subprocess.run(["apt-get", "download", package], cwd=work, **run)  # type: ignore[call-overload]
    (deb,) = work.glob("*.deb")
    unpacked = work / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], **run)  # type: ignore[call-overload]
    # The package ships no modules.dep (its postinst makes it): without it nothing loads.
    subprocess.run(["depmod", "-b", str(unpacked), version], **run)  # type: ignore[call-overload]
    shutil.rmtree(found.root, ignore_errors=True)
    unpacked.rename(found.root)
    shutil.rmtree(work)
    return found


def python_trees() -> list[Path]:
    """The directories the VM's Python needs: the interpreter prefix (unless it is the system's /usr,
    which the 9p root serves), the virtualenv when outside the checkout, and the checkout."""
    trees = [Path(sys.base_prefix)] if Path(sys.base_prefix) not in (Path("/usr"), Path("/")) else []
    if not Path(sys.prefix).is_relative_to(ROOT):
        trees.append(Path(sys.prefix))
    return [*trees, ROOT]


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _skipped(directory: str, names: list[str]) -> set[str]:
    return (STDLIB_SKIPPED if Path(directory) == STDLIB else SKIPPED) & set(names)


def build_image(image: Path, trees: list[Path]) -> None:
    """A read-only ext4 image holding `trees` at their absolute paths (staged as hard links)."""
    compileall.compile_dir(ROOT, quiet=2, workers=0, rx=re.compile(r"/\.(venv|git)/"))
    stage = image.with_suffix(".stage")
    shutil.rmtree(stage, ignore_errors=True)
    for tree in trees:
        shutil.copytree(
            tree,
            stage / tree.relative_to("/"),
            symlinks=True,
            ignore=_skipped,
            copy_function=_link_or_copy,
        )
    size_mib = (
        256 + sum(f.stat().st_size for f in stage.rglob("*") if f.is_file() and not f.is_symlink()) // 2**20
    )
    subprocess.run(
        [
            "mke2fs",
            "-q",
            "-F",
            "-t",
            "ext4",
            "-O",
            "^has_journal",
            "-m",
            "0",
            "-d",
            str(stage),
            str(image),
            f"{size_mib}M",
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    shutil.rmtree(stage)


def vng_argv(
    k: Kernel, image: Path, results: Path, command: list[str], *, cpus: int = 2, memory: str = "2G"
) -> list[str]:
    """virtme-ng booting `k` once and running `command` (shell words) inside; its exit status is vng's.

    --disable-kvm: KVM crashes qemu on these machines; --force-9p: bookworm's virtiofsd fails; the kernel
    cache is passed in because the guest mounts a tmpfs over /var/cache; `results` is the one directory
    whose writes the host sees."""
    vng = str(Path(sys.executable).parent / "vng")
    return [
        vng, "--run", str(k.vmlinuz), "--disable-kvm", "--force-9p",
        "--cpus", str(cpus), "--memory", memory,
        "--rodir", str(k.root.parent), "--rwdir", str(results),
        f"--qemu-opts=-drive file={image},if=virtio,format=raw,readonly=on",
        "--exec", shlex.join(command),
    ]  # fmt: skip
