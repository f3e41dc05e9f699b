"""The README and docs/ as a reader meets them: every relative link and #anchor resolves, the README
stays a front door (at most 300 lines), and what it states as defaults and templates is what the
config tree holds."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from mnist_cnn.config.checks import check_config
from tests.helpers.config import make_cfg

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)|<img [^>]*src=\"([^\"]+)\"")
HEADING = re.compile(r"^#{1,6} +(.+?) *#*$", re.M)


def prose(text: str) -> str:
    """The text outside fenced code blocks (where a `# comment` is no heading and `[x](y)` no link)."""
    return FENCE.sub("", text)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped (letters, digits, `_`, `-` and
    spaces kept), each space a '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set:
    """Every anchor of a page; a heading seen before gets GitHub's -1, -2 ... suffix."""
    seen, found = {}, set()
    for heading in HEADING.findall(prose(page.read_text(encoding="utf-8"))):
        base = anchor(heading)
        found.add(f"{base}-{seen[base]}" if base in seen else base)
        seen[base] = seen.get(base, 0) + 1
    return found


def broken_links(page: Path) -> list:
    """Each relative link or image of `page` whose file, or #anchor in it, does not exist."""
    broken = []
    for match in LINK.finditer(INLINE_CODE.sub("", prose(page.read_text(encoding="utf-8")))):
        target = match.group(1) or match.group(2)
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{page.name}: {target} (no file {path})")
        elif fragment and fragment not in anchors(linked):
            broken.append(f"{page.name}: {target} (no heading with anchor #{fragment} in {linked.name})")
    return broken


def test_anchors_are_computed_as_github_computes_them():
    assert anchor("Time to 99%: fast99 against the tutorial loop") == "time-to-99-fast99-against-the-tutorial-loop"
    assert anchor("The tutorial loop and mnist_cnn's loop") == "the-tutorial-loop-and-mnist_cnns-loop"
    assert anchor("The guide: docs/") == "the-guide-docs"


def test_every_relative_link_and_anchor_in_the_readme_and_docs_resolves():
    assert len(PAGES) >= 9
    broken = [link for page in PAGES for link in broken_links(page)]
    assert not broken, "\n".join(broken)


def test_a_link_to_a_missing_file_or_heading_is_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [gone](#nowhere) [file](other.md) `[code](x.md)`\n```\n[no](y.md)\n```\n")
    assert broken_links(page) == [
        "page.md: #nowhere (no heading with anchor #nowhere in page.md)",
        "page.md: other.md (no file other.md)",
    ]


def test_the_readme_is_a_front_door_of_at_most_300_lines():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 300
    assert "make train" in readme and "make test" in readme


def section(page: Path, title: str) -> str:
    """The text under the `## title` heading of `page`, up to the next `## ` heading."""
    text = page.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def key_table() -> list:
    """(key, default) of each row of the README's key table."""
    table = section(ROOT / "README.md", "The keys you will change most")
    return re.findall(r"^\| `([^`]+)` \| (.+?) \| .+ \|$", table, re.M)


def test_the_readme_lists_15_keys_with_the_defaults_the_config_tree_gives():
    cfg, raw = make_cfg([]), OmegaConf.to_container(make_cfg([]), resolve=False)
    rows = key_table()
    assert len(rows) == 15, rows
    checked = 0
    for key, default in rows:
        literal = re.fullmatch(r"`([^`]+)`", default)
        from_env = re.fullmatch(r"`\$(\w+)`, else `([^`]+)`", default)
        if from_env:
            node = raw
            for part in key.split("."):
                node = node[part]
            assert node == "${oc.env:%s,%s}" % from_env.groups(), (key, default, node)
        elif literal and "." not in key and isinstance(cfg.get(key), type(cfg.model)):  # a group: its option
            assert cfg[key].name == literal.group(1), (key, default)
        elif literal:
            assert OmegaConf.select(cfg, key) == yaml.safe_load(literal.group(1)), (key, default)
        else:
            continue  # described, not a value: `experiment` (none), `model.layers.N.KEY`
        checked += 1
    assert checked == 13


def test_the_readmes_model_file_template_composes_and_builds(tmp_path):
    template = re.search(r"```yaml\n(.+?)```", section(ROOT / "README.md", "A model file"), re.S).group(1)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text(template)
    cfg = make_cfg(["model=mine", f"hydra.searchpath=[file://{tmp_path}]"])
    assert cfg.model.name == "mine"
    planned = check_config(cfg).plan()  # ConfigError where a layer does not fit
    assert [layer.out_shape for layer in planned if layer.module in ("Conv2d", "Linear")] == [
        (32, 28, 28),
        (64, 14, 14),
        (128,),
        (10,),
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_a_page_names_the_2_core_machine_at_most_once(page):
    """The machine is stated once per page, then called this page's machine."""
    assert page.read_text(encoding="utf-8").count("2 cores of an AMD EPYC") <= 1


def test_the_readme_gives_every_console_script_and_make_target_a_line():
    commands = section(ROOT / "README.md", "Commands")
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    targets = re.search(r"^\.PHONY: (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    missing = [name for name in scripts if f"\n{name} " not in commands]
    missing += [target for target in targets if f"\nmake {target}" not in commands]
    assert not missing, missing
