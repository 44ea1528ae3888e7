"""The README's commands are the ones that exist: every `python -m`, `torchrun` and `make` line
names a real command, and every option it shows is one that command takes."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _readme_commands() -> list[str]:
    """Indented command lines (with their `[...]` continuation lines) and inline `...` spans
    that start with python -m, torchrun or make."""
    starts = ("python -m ", "torchrun ", "make ")
    found: list[str] = []
    for line in README.splitlines():
        text = line.strip()
        indented = line.startswith("    ")
        if indented and found and text.startswith(("[", "--")):
            found[-1] += " " + text
        elif line.startswith("    ") and text.startswith(starts):
            found.append(text)
    for span in re.findall(r"`([^`]+)`", README):
        if span.startswith(starts):
            found.append(span)
    return [c.split("  #")[0].split(" # ")[0].strip() for c in found]


COMMANDS = _readme_commands()


def _group(module: str):
    if module == "extract":
        from extract.__main__ import app
    elif module == "classify":
        from classify.__main__ import app
    else:
        from detect.__main__ import app
    return typer.main.get_command(app)


def _click_command(module: str, words: list[str]):
    """The command object that `python -m MODULE words...` runs, and the words after it."""
    cmd = _group(module)
    rest = list(words)
    while hasattr(cmd, "commands") and rest and rest[0] in cmd.commands:
        cmd = cmd.commands[rest.pop(0)]
    assert not hasattr(cmd, "commands"), f"python -m {module} {' '.join(words)}: no command"
    return cmd, rest


def _check_bench(module: str, words: list[str], line: str) -> None:
    """`python -m bench.NAME`: a benchmark module that exists (NAME is a placeholder for any of
    them) and takes the options shown (each an argparse option in its source)."""
    name = module.removeprefix("bench.")
    files = sorted((REPO / "bench").glob("*.py")) if name == "NAME" else [
        REPO / "bench" / f"{name}.py"]
    assert all(f.is_file() for f in files), f"{line}: no such benchmark"
    for opt in re.findall(r"--[a-z][a-z0-9-]*", " ".join(words)):
        assert all(f'"{opt}"' in f.read_text() for f in files), f"{line}: {opt} is not an option"


def _check_python_m(module: str, words: list[str], line: str) -> None:
    if module.startswith("bench."):
        return _check_bench(module, words, line)
    assert module in ("extract", "detect", "classify"), line
    cmd, rest = _click_command(module, words)
    known = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
    shown = {w.split("=")[0] for w in re.findall(r"--[a-z][a-z0-9-]*", " ".join(rest))}
    assert shown <= known, f"{line}: {sorted(shown - known)} not options of the command"


def test_readme_has_the_commands_we_check():
    assert sum(c.startswith("python -m") for c in COMMANDS) >= 12
    assert sum(c.startswith("torchrun") for c in COMMANDS) >= 2
    assert {"make demo", "make test"} <= set(COMMANDS)


@pytest.mark.parametrize("line", [c for c in COMMANDS if c.startswith("python -m")])
def test_python_m_lines_name_real_commands_and_options(line):
    words = shlex.split(line.replace("...", ""))
    _check_python_m(words[2], words[3:], line)


@pytest.mark.parametrize("line", [c for c in COMMANDS if c.startswith("torchrun")])
def test_torchrun_lines_parse_as_torchrun_runs_them(line):
    from torch.distributed.run import get_args_parser

    words = shlex.split(line.replace("...", ""))
    args = get_args_parser().parse_args(words[1:])
    assert args.module, f"{line}: torchrun needs -m MODULE (not `python -m`)"
    _check_python_m(args.training_script, list(args.training_script_args), line)


def test_make_lines_name_real_targets_and_variables():
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M))
    variables = set(re.findall(r"^([A-Z_]+) \?=", makefile, re.M))
    for line in (c for c in COMMANDS if c.startswith("make ")):
        words = shlex.split(line)
        assert words[1] in targets, line
        for w in words[2:]:
            if "=" in w:
                assert w.split("=")[0] in variables, f"{line}: {w.split('=')[0]} is not a variable"


@pytest.mark.parametrize("module", ["extract", "detect"])
def test_top_level_help_lists_every_command(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, text=True,
                         capture_output=True, check=True).stdout
    names = list(_group(module).commands)
    for name in names:
        assert re.search(rf"^\W*{re.escape(name)}\s", out, re.M), f"{module} --help: {name}"


def test_commands_print_no_torch_jit_warning(tmp_path):
    """Every command imports pytorchvideo (through fvcore, which calls torch.jit.script)."""
    r = subprocess.run([sys.executable, "-m", "extract", "features", str(tmp_path / "nope.mp4"),
                        "--out", str(tmp_path / "out"), "--weights", "random"], cwd=REPO,
                       text=True, capture_output=True)
    assert r.returncode == 2 and "no such file or folder" in r.stderr, r.stderr
    assert "Warning" not in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def _all_commands():
    """(module, words, click command) of every command of the three CLIs."""
    out = []
    for module in ("extract", "detect", "classify"):
        stack = [([], _group(module))]
        while stack:
            words, cmd = stack.pop()
            if hasattr(cmd, "commands"):
                stack += [([*words, n], c) for n, c in cmd.commands.items()]
            else:
                out.append((module, words, cmd))
    return out


def test_every_option_has_help_and_help_fits_80_columns():
    from typer.testing import CliRunner

    commands = _all_commands()
    assert len(commands) >= 15
    runner = CliRunner()
    for module, words, cmd in commands:
        where = f"python -m {module} {' '.join(words)}"
        assert cmd.help, f"{where}: no description"
        for p in cmd.params:
            if p.name != "help" and p.param_type_name == "option":
                assert getattr(p, "help", None), f"{where} {p.opts[0]}: no help text"
        app = {"extract": "extract.__main__", "detect": "detect.__main__",
               "classify": "classify.__main__"}[module]
        r = runner.invoke(__import__(app, fromlist=["app"]).app, [*words, "--help"],
                          terminal_width=80)
        assert r.exit_code == 0, (where, r.output)
        long = [ln for ln in r.output.splitlines() if len(ln) > 80]
        assert not long and "\u2026" not in r.output, (where, long)
        for p in cmd.params:  # every option name is shown whole
            for opt in p.opts:
                assert opt in r.output, (where, opt)


def test_make_help_lists_every_variable():
    makefile = (REPO / "Makefile").read_text()
    variables = set(re.findall(r"^([A-Z_]+) \?=", makefile, re.M))
    internal = {"TORCH_VERSION", "TORCHVISION_VERSION", "TORCH_CPU_INDEX", "TORCH_BUILD", "VENV"}
    out = subprocess.run(["make", "-s", "help"], cwd=REPO, text=True, capture_output=True,
                         check=True).stdout
    shown = set(re.findall(r"\b([A-Z_]+)=", out.split("Variables")[1]))
    assert variables - internal <= shown, sorted(variables - internal - shown)
