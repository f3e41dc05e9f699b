"""What rebuilds a trained network without running any of its code: the `model.layers` it was
planned from, its input shape, its number of classes and its input normalisation.

Every logged model carries it as a small JSON file beside its weights (tracking.model), so that
mnist-cnn-eval, -predict and -export load a model by building it again with `build.build_model`
and reading plain tensors into it, never by unpickling what someone put in the store. The layers
are planned again on loading, so the file can only name the layer kinds of `layers.KINDS`.

No torch here: `config.checks` plans the layers of every config through it.
"""

import json
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from mnist_cnn.model.layers import Layer, Shape, plan_layers


@dataclass(frozen=True)
class Network:
    """A network as `network.json` holds it (`to_json`, `from_json`)."""

    layers: Tuple[Dict[str, Any], ...]  # model.layers, each entry without its unset keys
    in_shape: Shape  # one sample: (channels, height, width)
    num_classes: int
    mean: Optional[float] = None  # normalise the input with these (data.normalize); None: as it comes
    std: Optional[float] = None

    @classmethod
    def of(
        cls,
        layers: Sequence[Mapping[str, Any]],
        in_shape: Sequence[int],
        num_classes: int,
        mean: Optional[float] = None,
        std: Optional[float] = None,
    ) -> "Network":
        """A network of `layers` (a config's `model.layers`, as plain containers)."""
        kept = tuple({key: value for key, value in dict(layer).items() if value is not None} for layer in layers)
        return cls(kept, tuple(in_shape), num_classes, mean, std)

    def plan(self) -> List[Layer]:
        """The modules it is made of; ConfigError when its layers do not fit its shapes."""
        return plan_layers(self.layers, self.in_shape, self.num_classes)

    def build(self) -> Any:
        """A new `nn.Sequential` of this network, freshly initialised."""
        from mnist_cnn.model.build import build_model  # torch: seconds to import, only where a model is built

        return build_model(self.plan(), self.mean, self.std)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Network":
        """The network a `to_json` text describes; ValueError (or TypeError) when it is not one."""
        fields = json.loads(text)
        if not isinstance(fields, dict):
            raise ValueError("not a JSON object")
        network = cls.of(**fields)
        if not all(isinstance(n, int) and n > 0 for n in (*network.in_shape, network.num_classes)):
            raise ValueError(
                f"in_shape {list(network.in_shape)} and num_classes {network.num_classes} must be positive"
            )
        return network
