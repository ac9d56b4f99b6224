"""The docs users read: runnable examples, real commands, no citations of missing files."""

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SELF = pathlib.Path(__file__).resolve().relative_to(ROOT).as_posix()

# Citations of the project's internal specification files, which are not
# shipped with jaxbio: cite the paper, the reference code or the equation instead.
PATTERNS = ("specs/", "spec §", "spec.md", "hep.md", "burstccn.md", "rdd.md",
            "target-propagation.md", "../shared/specs")
_PATTERN = re.compile("|".join(re.escape(p) for p in PATTERNS))


def _tracked_text_files():
  out = subprocess.run(["git", "ls-files", "-z", "--", "*.py", "*.md"], cwd=ROOT,
                       capture_output=True, text=True, check=True).stdout
  return [f for f in out.split("\0") if f and f != SELF and (ROOT / f).is_file()]


def test_no_citations_of_files_users_lack():
  files = _tracked_text_files()
  assert files, "git ls-files found no tracked .py or .md files"
  hits = []
  for name in files:
    text = (ROOT / name).read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), 1):
      match = _PATTERN.search(line)
      if match:
        hits.append(f"{name}:{number}: {match.group(0)!r} in {line.strip()[:120]}")
  assert not hits, ("citations of specification files users do not have "
                    f"({len(hits)}):\n" + "\n".join(hits))


README = (ROOT / "README.md").read_text(encoding="utf-8")


def _readme_command(tag: str) -> str:
  """The README line after the one starting with ``# <tag>``, as .ci/run reads it."""
  return subprocess.run(["awk", "-v", f"tag=# {tag}",
                         "index($0, tag) == 1 { getline; print; exit }", "README.md"],
                        cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def test_ci_runs_the_readme_commands_and_they_are_well_formed():
  ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
  assert 'readme_command "Main job"' in ci and 'readme_command "Tests"' in ci
  main, tests = _readme_command("Main job"), _readme_command("Tests")
  assert main.startswith("pip install -e . && python -m launch.main "), main
  assert tests == 'pip install -e ".[test]" && python -m pytest -q -n 2 tests'
  flags = main.split("python -m launch.main ", 1)[1].split()
  workdir = next(f.split("=", 1)[1] for f in flags if f.startswith("--workdir="))
  assert not workdir.startswith("/"), "the README's workdir is relative, as users type it"
  from launch import main as launcher  # pylint: disable=g-import-not-at-top
  cwd = os.getcwd()
  try:
    os.chdir(ROOT)
    assert launcher._check_config_args(flags) is None  # pylint: disable=protected-access
  finally:
    os.chdir(cwd)


def _python_blocks(text: str) -> list[str]:
  return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_python_examples_run():
  blocks = _python_blocks(README)
  assert len(blocks) >= 2
  for block in blocks:
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)  # pylint: disable=exec-used
    metrics = namespace["metrics"]
    assert all(float(v) == float(v) for v in metrics.values())  # finite, no NaN


def test_launcher_help_and_docstring_name_config_files_that_exist():
  from launch import main as launcher  # pylint: disable=g-import-not-at-top
  proc = subprocess.run([sys.executable, "-m", "launch.main", "--helpshort"], cwd=ROOT,
                        capture_output=True, text=True, timeout=1200)
  text = launcher.__doc__ + proc.stdout + proc.stderr
  named = set(re.findall(r"launch/configs/\w+\.py", text))
  for short in re.findall(r"\b(\w+\.py)\b", text):
    if (ROOT / "launch" / "configs" / short).exists():
      named.add(f"launch/configs/{short}")
  assert {"launch/configs/bartunov.py", "launch/configs/hep_fmnist.py",
          "launch/configs/hep_conv.py"} <= named
  for path in named:
    assert (ROOT / path).is_file(), path
  # Every .py name the help mentions is a config file that exists (or the launcher itself).
  for short in set(re.findall(r"\b(\w+\.py)\b", text)) - {"main.py"}:
    assert (ROOT / "launch" / "configs" / short).is_file(), short


def test_docstring_examples_run_as_doctests():
  import doctest  # pylint: disable=g-import-not-at-top
  import importlib  # pylint: disable=g-import-not-at-top
  modules = []
  for path in sorted((ROOT / "jaxbio").rglob("*.py")):
    if ">>>" in path.read_text(encoding="utf-8"):
      modules.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
  assert "jaxbio.rules.base" in modules
  for name in modules:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, (name, result)


def test_readme_compare_rules_command_runs_every_feedforward_rule():
  from benchmarks import suites  # pylint: disable=g-import-not-at-top
  from jaxbio import registry  # pylint: disable=g-import-not-at-top
  match = re.search(r"python -m benchmarks.accuracy --suite=(\w+)", README)
  assert match, "the README's compare-rules command"
  import importlib  # pylint: disable=g-import-not-at-top
  suite = suites.SUITES[match.group(1)]
  rules = {importlib.import_module(f"launch.configs.{module}").get_config(arg).rule.name
           for _, module, arg, _ in suite}
  assert rules == set(registry.rules_of("feedforward"))
