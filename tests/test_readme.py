"""The README's front door stays true: CI runs exactly its test command, and the main-job command exists."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_exactly_the_readme_test_command():
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("pip install")]
    assert len(ci) == 1
    readme = (ROOT / "README.md").read_text()
    assert f"```bash\n{ci[0]}\n```" in readme


def test_readme_main_job_command_is_a_real_subcommand():
    from minilongllora.cli import build_parser

    readme = (ROOT / "README.md").read_text()
    assert "pip install torch==2.13.0 && pip install -e . && python -m minilongllora longlora" in readme
    assert build_parser().parse_args(["longlora"]).command == "longlora"
