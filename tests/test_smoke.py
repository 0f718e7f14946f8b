from lrfr_cli import __version__


def test_version_and_help(cli):
    r = cli(None, "--version")
    assert r.exit_code == 0 and __version__ in r.stdout
    r = cli(None, "--help")
    assert r.exit_code == 0
    for name in ("make-list", "degrade", "status"):
        assert name in r.stdout
