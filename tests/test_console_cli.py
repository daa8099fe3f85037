"""`alerter hash-password`: a password on stdin becomes a hash the console accepts."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from alerter.config import AuthConfig
from alerter.console.auth import Access, verify_hash


async def hash_password(stdin: bytes) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "alerter",
        "hash-password",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_hash_password_prints_an_argon2_hash_that_logs_in(tmp_path: Path) -> None:
    code, out, err = await hash_password(b"s3cret pass\n")
    assert code == 0 and err == ""
    hashed = out.strip()
    assert hashed.startswith("$argon2id$") and "s3cret" not in out
    assert verify_hash(hashed, "s3cret pass") and not verify_hash(hashed, "s3cret pass\n")
    auth = AuthConfig.model_validate({"users": [{"username": "ops", "password_hash": hashed}]})
    access = Access(auth, "0.0.0.0:8080", store=None)  # type: ignore[arg-type]  # passwords need no store
    assert await access.check_password("ops", "s3cret pass")
    assert not await access.check_password("ops", "wrong")
    assert not await access.check_password("nobody", "s3cret pass")


async def test_a_password_check_does_the_same_work_whether_the_user_exists_or_how_it_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a fast answer for a plain password, a slow one for others, would tell which usernames exist
    checked: list[str] = []

    def counted(stored: str, password: str) -> bool:
        checked.append(password)
        return verify_hash(stored, password)

    monkeypatch.setattr("alerter.console.auth.verify_hash", counted)
    auth = AuthConfig.model_validate({"users": [{"username": "demo", "password": "plain pass"}]})
    access = Access(auth, "0.0.0.0:8080", store=None)  # type: ignore[arg-type]  # passwords need no store
    assert await access.check_password("demo", "plain pass")
    assert not await access.check_password("demo", "wrong")
    assert not await access.check_password("nobody", "plain pass")
    assert checked == ["plain pass", "wrong", "plain pass"]  # one argon2 check each


@pytest.mark.parametrize("stdin", [b"", b"\n"])
async def test_hash_password_without_a_password_is_a_usage_error(stdin: bytes) -> None:
    code, out, err = await hash_password(stdin)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "no password" in err and "Traceback" not in err
