"""Reading user files: bounded, never blocking, every failure one SlurmkitError."""

import os
import threading

import pytest

from slurmkit import files
from slurmkit.errors import SlurmkitError, UserInputError


def within(seconds, call):
    """Run ``call`` in a thread; fail the test if it has not returned in time (a read
    that blocks on a FIFO would hang the suite otherwise)."""
    outcome = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as error:  # noqa: BLE001 - handed back to the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def test_regular_file_is_read(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text('command = ["x"]\n')
    assert files.read_text(path, "spec file") == 'command = ["x"]\n'
    assert files.load_toml(path, "spec file") == {"command": ["x"]}


def test_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "spec.toml"
    os.mkfifo(fifo)
    with pytest.raises(UserInputError, match="is a FIFO"):
        within(5, lambda: files.read_bytes(fifo, "spec file"))


def test_a_device_is_refused_without_reading_it():
    with pytest.raises(UserInputError, match="character device"):
        within(5, lambda: files.read_bytes("/dev/zero", "spec file"))


def test_a_symlink_loop_and_a_missing_file_are_input_errors(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(UserInputError, match="symbolic link loop"):
        files.read_bytes(tmp_path / "a", "spec file")
    with pytest.raises(UserInputError, match="does not exist"):
        files.read_bytes(tmp_path / "missing", "spec file")
    with pytest.raises(UserInputError, match="is a directory"):
        files.read_bytes(tmp_path, "spec file")
    with pytest.raises(UserInputError, match="NUL"):
        files.read_bytes("a\0b", "spec file")


def test_a_file_over_the_cap_is_refused(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(b"x" * 101)
    with pytest.raises(UserInputError, match="limit is 100"):
        files.read_bytes(path, "spec file", max_bytes=100)
    assert len(files.read_bytes(path, "spec file", max_bytes=101)) == 101


def test_bad_utf8_names_the_line(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_bytes(b'a = 1\nb = "\xff"\n')
    with pytest.raises(UserInputError, match="byte 0xff on line 2"):
        files.read_text(path, "spec file")


def test_deeply_nested_toml_is_an_input_error(tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(UserInputError, match="nested too deeply"):
        files.load_toml(path, "spec file")


def test_unreadable_file_is_an_input_error(tmp_path):
    if os.geteuid() == 0:
        # root reads anything: check the mapping instead of the permission itself.
        error = files._os_error(PermissionError(13, "Permission denied"), "spec file", tmp_path)
        assert isinstance(error, UserInputError) and "permission denied" in str(error)
        return
    path = tmp_path / "secret"
    path.write_text("x")
    path.chmod(0)
    with pytest.raises(UserInputError, match="permission denied"):
        files.read_bytes(path, "spec file")


def test_io_errors_of_the_machine_are_not_input_errors(tmp_path):
    error = files._os_error(OSError(5, "Input/output error"), "spec file", tmp_path)
    assert type(error) is SlurmkitError and error.exit_code == 1
