"""An arm64 Debian root file system for aarch64 test devices, built once from Debian's packages.

The devices of tests/sshdevices.py are x86_64 like this machine. An aarch64 device is the same
namespaced sshd whose session is chrooted (sshd's ``ChrootDirectory``) into an arm64 Debian root:
every command the device runs there (its shell, its own aarch64 CPython, pip, the runner) is an
aarch64 binary that the kernel hands to ``qemu-aarch64`` through binfmt_misc. It is real aarch64
userspace with no internet; only the CPU is emulated (SIMD about 900x slower: tiny models only).

:func:`arm64_root` builds the root with ``debootstrap --arch arm64`` from the Debian mirror this
machine's apt uses, once, into a cache folder (reused by later test runs); :func:`mount_device_root`
gives one device a writable overlay of it with /proc, /sys and /dev, torn down by unmounting.

qemu-user passes this machine's x86 /proc/cpuinfo through to the aarch64 programs, and the
cpuinfo library inside onnxruntime's aarch64 build crashes parsing it (SIGSEGV at import). So the
device's /proc/cpuinfo is replaced by the emulated CPU's own description, in the arm64 kernel's
format: its MIDR_EL1 and CNTFRQ_EL0 read by ``mrs`` inside the emulation, its features from the
HWCAP words qemu gives the process (/proc/self/auxv), one entry per CPU of this machine.

Each device emulates one named core (``QEMU_CPU``, set for its sessions by sshd): by default the
Jetson Nano's Cortex-A57; ``cortex-a76`` is the Raspberry Pi 5's. qemu's default "max" CPU has
SME, with which onnxruntime 1.32's int8 MatMulInteger gave wrong logits under qemu 7.2 (largest
difference from fp32 1.67 against 0.013 on x86_64 and on every named core): no edge board has SME.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

SUITE = "bookworm"
DEFAULT_CPU = "cortex-a57"  # the Jetson Nano's core; qemu's own "max" CPU is no board's (and see below)
PACKAGES = ("python3", "python3-venv")
CACHE = Path(os.environ.get("EDGEGATE_TEST_ROOTFS") or "/var/cache/edgegate-tests")
MOUNTS = Path("/run/edgegate-tests")  # chroot folders: every component root-owned, as sshd insists
BINFMT = Path("/proc/sys/fs/binfmt_misc")
BUILD_TIMEOUT_S = 1200


class RootUnavailable(RuntimeError):
    """This machine cannot run an aarch64 device; the message says what is missing."""


def unavailable() -> str | None:
    """Why aarch64 devices cannot run here (None when they can); mounts binfmt_misc if needed."""
    if os.geteuid() != 0:
        return "aarch64 devices need root (chroot, overlay mounts, network namespaces)"
    for tool, package in (("debootstrap", "debootstrap"), ("qemu-aarch64-static", "qemu-user-static")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install {package})"
    return _binfmt_problem()


def _binfmt_problem() -> str | None:
    if not (BINFMT / "status").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True, check=False)
    if not (BINFMT / "qemu-aarch64").exists() and shutil.which("update-binfmts"):
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], capture_output=True, check=False)
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists():
        return "qemu-aarch64 is not registered in binfmt_misc (update-binfmts --enable qemu-aarch64)"
    flags = next((line.split()[1] for line in entry.read_text().splitlines() if line.startswith("flags:")), "")
    if "F" not in flags:  # without F the interpreter is looked up inside the chroot, where it is not
        return f"qemu-aarch64's binfmt entry lacks the F (fix binary) flag: {flags!r}"
    return None


def arm64_root() -> Path:
    """The cached arm64 root (built on first use, about 2-3 minutes); RootUnavailable if it cannot be."""
    why = unavailable()
    if why:
        raise RootUnavailable(why)
    target = CACHE / f"rootfs-arm64-{SUITE}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with _lock(CACHE / ".rootfs.lock"):
        if not (target / ".complete").exists():
            _build(target)
    return target


def _build(target: Path) -> None:
    """debootstrap into a partial folder, then the emulated CPU's cpuinfo, then rename: all or nothing."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    command = ["debootstrap", "--arch", "arm64", "--variant=minbase", f"--include={','.join(PACKAGES)}",
               SUITE, str(partial), debian_mirror()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RootUnavailable(f"debootstrap failed ({done.returncode}): {done.stdout[-600:]}{done.stderr[-600:]}")
    (partial / ".complete").write_text(" ".join(command[:-1]) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)


# Runs inside the root (aarch64). HWCAP and HWCAP2 bit names as arch/arm64/kernel/cpuinfo.c prints them.
CPUINFO_SCRIPT = r"""
import ctypes, mmap, os, struct, sys
HWCAP = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg".split()
HWCAP2 = "dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm svebf16 i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme smei16i64 smef64f64 smei8i32 smef16f32 smeb16f32 smef32f32 smefa64 wfxt".split()
def mrs(instruction):
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(struct.pack("<II", instruction, 0xD65F03C0))  # mrs x0, <register>; ret
    return ctypes.CFUNCTYPE(ctypes.c_uint64)(ctypes.addressof(ctypes.c_char.from_buffer(page)))()
raw = open("/proc/self/auxv", "rb").read()
auxv = dict(struct.unpack_from("QQ", raw, i) for i in range(0, len(raw), 16))
names = [n for bit, n in enumerate(HWCAP) if auxv.get(16, 0) >> bit & 1] + [n for bit, n in enumerate(HWCAP2) if auxv.get(26, 0) >> bit & 1]
midr, frequency = mrs(0xD5380000), mrs(0xD53BE000)  # MIDR_EL1, CNTFRQ_EL0
entry = ("processor\t: {}\nBogoMIPS\t: %d.%02d\nFeatures\t: %s\nCPU implementer\t: 0x%02x\nCPU architecture: 8\n"
         "CPU variant\t: 0x%x\nCPU part\t: 0x%03x\nCPU revision\t: %d\n\n") % (
    frequency // 500000, frequency // 5000 % 100, " ".join(names), midr >> 24 & 0xFF, midr >> 20 & 0xF, midr >> 4 & 0xFFF, midr & 0xF)
sys.stdout.write("".join(entry.format(n) for n in range(int(sys.argv[1]))))
"""


def emulated_cpuinfo(root: Path, cpu: str) -> Path:
    """The /proc/cpuinfo of ``root``'s programs on qemu's ``cpu``, made once per CPU model."""
    path = CACHE / f"cpuinfo-arm64-{cpu}"
    with _lock(CACHE / ".rootfs.lock"):
        if not path.exists():
            done = subprocess.run(["chroot", str(root), "python3", "-c", CPUINFO_SCRIPT, str(os.cpu_count() or 1)],
                                  capture_output=True, text=True, timeout=120, check=False,
                                  env={**os.environ, "QEMU_CPU": cpu})
            if done.returncode != 0 or "CPU part" not in done.stdout:
                raise RootUnavailable(f"could not read the identity of qemu's {cpu}: {done.stderr.strip()[-400:]}")
            path.write_text(done.stdout)
    return path


def debian_mirror() -> str:
    """The Debian mirror this machine's apt reads (one-line or deb822 sources)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        with contextlib.suppress(OSError):
            text = path.read_text()
            found = re.search(r"^URIs:\s*(\S+/debian)/?\s*$", text, re.M) or \
                re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s", text, re.M)
            if found:
                return found.group(1)
    raise RootUnavailable("no Debian mirror found in /etc/apt/sources.list{,.d}")


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def mount_device_root(lower: Path, ident: str, scratch: Path, user: str, uid: int, gid: int,
                      cpu: str = DEFAULT_CPU) -> list[Path]:
    """Mount a writable overlay of ``lower`` at ``MOUNTS/ident`` with /proc, /sys, /dev and
    /dev/shm, give ``user`` a passwd entry and a home there; return the mount points, outermost first."""
    merged = MOUNTS / ident
    upper, work = scratch / "overlay-upper", scratch / "overlay-work"
    for folder in (upper, work):  # a device starts from the pristine root, whatever ran before
        shutil.rmtree(folder, ignore_errors=True)
    for folder in (MOUNTS, merged, upper, work):
        folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    mounts = [(["-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}"], merged),
              (["-t", "proc", "proc"], merged / "proc"), (["-t", "sysfs", "sysfs"], merged / "sys"),
              (["--bind", str(emulated_cpuinfo(lower, cpu))], merged / "proc" / "cpuinfo"),
              (["-t", "devtmpfs", "devtmpfs"], merged / "dev"), (["-t", "tmpfs", "-o", "mode=1777", "shm"], merged / "dev" / "shm")]
    done: list[Path] = []
    try:
        for options, point in mounts:
            if not point.exists():
                point.mkdir()
            _mount(options, point)
            done.append(point)
    except BaseException:
        for point in reversed(done):
            subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)
        raise
    _add_user(merged, user, uid, gid)
    return done


def _mount(options: list[str], point: Path) -> None:
    result = subprocess.run(["mount", *options, str(point)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RootUnavailable(f"mount {' '.join(options)} {point} failed: {result.stderr.strip()}")


def _add_user(merged: Path, user: str, uid: int, gid: int) -> None:
    """The device user as the arm64 root knows it (its own passwd and group files)."""
    home = Path("/home") / user
    with open(merged / "etc" / "passwd", "a") as passwd:
        passwd.write(f"{user}:x:{uid}:{gid}:EdgeGate test device:{home}:/bin/bash\n")
    with open(merged / "etc" / "group", "a") as group:
        group.write(f"{user}:x:{gid}:\n")
    inside = merged / home.relative_to("/")
    inside.mkdir(parents=True, exist_ok=True)
    os.chown(inside, uid, gid)
