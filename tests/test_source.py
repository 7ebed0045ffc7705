"""source_revision(): the package version plus the commit of a git checkout, checked on throwaway repositories."""
import shutil
import subprocess

import pytest

import gradmask
from gradmask.train.source import source_revision

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(root, *args):
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path):
    root = tmp_path / "repo"
    (root / "gradmask").mkdir(parents=True)
    (root / "gradmask" / "__init__.py").write_text("x = 1\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "one")
    return root


def test_a_clean_checkout_names_its_commit(checkout):
    commit = _git(checkout, "rev-parse", "HEAD")
    assert source_revision(checkout / "gradmask") == f"{gradmask.__version__}+g{commit[:12]}"


def test_changed_tracked_files_mark_it_dirty_untracked_files_do_not(checkout):
    (checkout / "notes.txt").write_text("untracked\n")
    assert not source_revision(checkout / "gradmask").endswith(".dirty")
    (checkout / "gradmask" / "__init__.py").write_text("x = 2\n")
    source_revision.cache_clear()
    assert source_revision(checkout / "gradmask").endswith(".dirty")


def test_a_package_that_is_not_the_checkouts_top_level_folder_gets_the_plain_version(checkout):
    nested = checkout / "vendor" / "gradmask"
    nested.mkdir(parents=True)
    assert source_revision(nested) == gradmask.__version__


def test_outside_any_checkout_the_plain_version(tmp_path):
    (tmp_path / "gradmask").mkdir()
    assert source_revision(tmp_path / "gradmask") == gradmask.__version__


def test_the_running_package_names_its_checkouts_commit():
    from gradmask.train.source import PACKAGE_DIR
    assert PACKAGE_DIR.name == "gradmask" and (PACKAGE_DIR / "__init__.py").is_file()
    assert source_revision().startswith(gradmask.__version__)
    if (PACKAGE_DIR.parent / ".git").exists():              # tests run from a clone (CI does)
        commit = _git(PACKAGE_DIR.parent, "rev-parse", "HEAD")
        assert source_revision().startswith(f"{gradmask.__version__}+g{commit[:12]}")
