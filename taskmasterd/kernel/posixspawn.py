"""posix_spawn(3) that lets other threads run while it waits.

glibc's posix_spawn is a clone(CLONE_VM | CLONE_VFORK): the calling thread is suspended until
the child has exec'd, which takes 0.3 ms on a quiet machine and 2-8 ms on a loaded one (the child
waits for a CPU like anyone else). os.posix_spawn holds the GIL all that time, so a spawn made on
another thread still stops the event loop; called through ctypes, the GIL is released for the
call (ctypes releases it around every foreign call), and the loop runs on while the child execs.

Only what processes/start.py uses: file actions (dup2, open), a new session, signals put back to
their default. The opaque glibc types get buffers larger than any glibc has used (80 and 336
bytes on x86-64 and aarch64).
"""
from __future__ import annotations

import ctypes
import os
from typing import Iterable, Mapping, Sequence

# <spawn.h> (glibc)
POSIX_SPAWN_SETSIGDEF = 0x04
POSIX_SPAWN_SETSIGMASK = 0x08
POSIX_SPAWN_SETSID = 0x80
_FILE_ACTIONS_SIZE = 256
_ATTR_SIZE = 1024
_SIGSET_SIZE = 128

# Only the spawn itself lets go of the GIL: each release is a chance for the loop thread to take
# it and for this one to wait for it back, and the other calls take microseconds.
_libc = ctypes.PyDLL(None, use_errno=True)
_spawn = ctypes.CDLL(None, use_errno=True).posix_spawn
_spawn.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p,
                   ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p)]
_add_dup2 = _libc.posix_spawn_file_actions_adddup2
_add_dup2.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
_add_open = _libc.posix_spawn_file_actions_addopen
_add_open.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint]
_setflags = _libc.posix_spawnattr_setflags
_setflags.argtypes = [ctypes.c_void_p, ctypes.c_short]
_sigaddset = _libc.sigaddset
_sigaddset.argtypes = [ctypes.c_void_p, ctypes.c_int]


def _check(code: int) -> None:
    if code != 0:
        raise OSError(code, os.strerror(code))


def _sigset(numbers: Iterable[int]) -> ctypes.Array[ctypes.c_char]:
    sigset = ctypes.create_string_buffer(_SIGSET_SIZE)
    _check(_libc.sigemptyset(sigset))
    for number in numbers:
        if _sigaddset(sigset, int(number)) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return sigset


def _strings(items: Iterable[bytes]) -> ctypes.Array[ctypes.c_char_p]:
    listed = list(items)
    return (ctypes.c_char_p * (len(listed) + 1))(*listed, None)


def posix_spawn(path: str, argv: Sequence[str], env: Mapping[str, str], file_actions: Sequence[tuple] = (),
                setsid: bool = False, setsigdef: Iterable[int] = (), setsigmask: Iterable[int] | None = None) -> int:
    """As os.posix_spawn with these arguments (file actions: os.POSIX_SPAWN_DUP2 and
    os.POSIX_SPAWN_OPEN tuples), without the GIL while the child execs; the child's pid.
    Raises OSError naming `path` when it cannot run."""
    actions = ctypes.create_string_buffer(_FILE_ACTIONS_SIZE)
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    _check(_libc.posix_spawn_file_actions_init(actions))
    try:
        _check(_libc.posix_spawnattr_init(attr))
        try:
            for action in file_actions:
                if action[0] == os.POSIX_SPAWN_DUP2:
                    _check(_add_dup2(actions, action[1], action[2]))
                elif action[0] == os.POSIX_SPAWN_OPEN:
                    _, fd, name, flags, mode = action
                    _check(_add_open(actions, fd, os.fsencode(name), flags, mode))
                else:
                    raise ValueError(f"unsupported file action {action!r}")
            flags = POSIX_SPAWN_SETSID if setsid else 0
            defaults = list(setsigdef)
            if defaults:
                _check(_libc.posix_spawnattr_setsigdefault(attr, _sigset(defaults)))
                flags |= POSIX_SPAWN_SETSIGDEF
            if setsigmask is not None:
                _check(_libc.posix_spawnattr_setsigmask(attr, _sigset(setsigmask)))
                flags |= POSIX_SPAWN_SETSIGMASK
            _check(_setflags(attr, flags))
            pid = ctypes.c_int()
            code = _spawn(ctypes.byref(pid), os.fsencode(path), actions, attr,
                          _strings(os.fsencode(arg) for arg in argv),
                          _strings(os.fsencode(key) + b"=" + os.fsencode(value) for key, value in env.items()))
        finally:
            _libc.posix_spawnattr_destroy(attr)
    finally:
        _libc.posix_spawn_file_actions_destroy(actions)
    if code != 0:
        raise OSError(code, os.strerror(code), path)
    return pid.value
