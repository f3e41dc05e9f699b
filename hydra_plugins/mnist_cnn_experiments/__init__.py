"""experiments/ as Hydra's group `experiment`: `mnist-cnn-train experiment=fast99` reads
experiments/fast99.yaml.

Hydra finds a group's options in a folder named after the group; the presets' folder is
experiments/ at the top of the repository (mnist_cnn.config.tree), so a config source of its own
serves it under the group's name, and a search path plugin puts it right after the project's
conf/ (only for the project's own tree: another Hydra app in the same environment is left alone).
Hydra loads both kinds of plugin only from the `hydra_plugins` namespace, so they live here.
"""

from pathlib import Path
from typing import List, Optional

from hydra._internal.core_plugins.file_config_source import FileConfigSource
from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin

from mnist_cnn.config.paths import EXPERIMENT, EXPERIMENTS_SCHEME, ConfigFolder
from mnist_cnn.config.tree import CONF_DIR, EXPERIMENTS_DIR

PROVIDER = "mnist_cnn"


class ExperimentsSource(ConfigSource):
    """A folder whose YAML files are the options of the group `experiment`, read as Hydra reads any file."""

    def __init__(self, provider: str, path: str) -> None:
        super().__init__(provider=provider, path=path)
        self.folder = ConfigFolder(Path(self.path), EXPERIMENT)
        self.files = FileConfigSource(provider=provider, path=f"file://{self.path}")  # reads the files

    @staticmethod
    def scheme() -> str:
        return EXPERIMENTS_SCHEME

    def load_config(self, config_path: str) -> ConfigResult:
        inside = self.folder.within(config_path)
        if inside is None:
            raise ConfigLoadError(f"Config not found : {config_path} (only {EXPERIMENT}/ is in {self.path})")
        loaded = self.files.load_config(inside)
        return ConfigResult(config=loaded.config, path=self.full_path(), provider=self.provider, header=loaded.header)

    def available(self) -> bool:
        return self.files.available()

    def is_group(self, config_path: str) -> bool:
        inside = self.folder.within(config_path)
        return config_path == "" or (inside is not None and self.files.is_group(inside))

    def is_config(self, config_path: str) -> bool:
        inside = self.folder.within(config_path)
        return inside is not None and self.files.is_config(inside)

    def list(self, config_path: str, results_filter: Optional[ObjectType]) -> List[str]:
        if config_path == "":  # the top holds the group itself
            return [EXPERIMENT] if results_filter in (None, ObjectType.GROUP) else []
        inside = self.folder.within(config_path)
        return [] if inside is None else self.files.list(inside, results_filter)


class ExperimentsSearchPath(SearchPathPlugin):
    """Puts experiments/ right after conf/ when conf/ is the primary config folder."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        main = [e.path for e in search_path.get_path() if e.provider == "main"]
        if [p.removeprefix("file://") for p in main] == [str(CONF_DIR)]:
            path = f"{EXPERIMENTS_SCHEME}://{EXPERIMENTS_DIR}"
            search_path.append(provider=PROVIDER, path=path, anchor=SearchPathQuery(provider="main"))
