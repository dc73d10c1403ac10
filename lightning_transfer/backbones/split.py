"""Any classification model as a conv base of named blocks plus the rest of its forward (its classifier).

One ``torch.fx`` trace of the model's own forward, with every submodule a leaf except the containers
that hold its stages, shows the modules in the order they run. The conv base is the chain of modules
that each take the previous one's output, from the input to the conv map the classifier pools; the
classifier is what the traced forward does with that map. A model whose forward is not such a chain
(ViT-style token models: position embeddings, class tokens) cannot be split and is refused.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection

from torch import fx, nn

from lightning_transfer.utils.errors import UserError
from lightning_transfer.utils.runtime import eval_mode

POOLING = (nn.MaxPool2d, nn.AvgPool2d)


class _StageTracer(fx.Tracer):
    """Traces ``method`` of the model itself and of the ``expand`` containers; all else is a leaf."""

    def __init__(self, expand: Collection[str], method: str) -> None:
        super().__init__()
        self.expand = set(expand)
        self.traced_func_name = method

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return qualified_name not in self.expand


def not_a_conv_base(
    name: str, reason: str = "it does not run as a chain of modules that ends in a feature map"
) -> UserError:
    return UserError(
        f"backbone {name!r} cannot be split into blocks of a convolutional base: {reason}. ViT-style "
        "models, whose features are tokens, are not supported; pick a convolutional model such as "
        "resnet50, convnext_tiny or timm/convnext_atto"
    )


def trace(model: nn.Module, name: str, expand: Collection[str], method: str = "forward") -> fx.GraphModule:
    """The traced ``method`` in eval mode: in training mode Inception and GoogLeNet branch off their
    auxiliary classifiers mid-way, and what is split off is used for inference."""
    try:
        with eval_mode(model):
            return fx.GraphModule(model, _StageTracer(expand, method).trace(model))
    except Exception as err:  # tracing fails in many ways (data-dependent control flow...), all mean "not splittable"
        raise not_a_conv_base(name, f"tracing its {method} failed ({type(err).__name__}: {str(err).splitlines()[0]})")


def module_chain(graph: fx.Graph, stop: Collection[str] = ()) -> list[fx.Node]:
    """The modules that run one after the other from the input, each on the previous one's output
    alone, up to (not including) a module whose top-level name is in ``stop``."""
    node = next(node for node in graph.nodes if node.op == "placeholder")
    chain = []
    while len(node.users) == 1:
        (user,) = node.users
        if user.op != "call_module" or user.args != (node,) or user.kwargs or user.target.split(".")[0] in stop:
            break
        chain.append(user)
        node = user
    return chain


def conv_base_paths(
    model: nn.Module, name: str, expand: Collection[str], features_method: str | None = None,
    head_modules: Collection[str] = (),
) -> list[str]:
    """Module paths of the conv base, in the order they run.

    With ``features_method`` (timm's ``forward_features``) the chain must be that whole method;
    otherwise it is the model's forward up to the first of ``head_modules`` (torchvision: avgpool...).
    """
    graph = trace(model, name, expand, features_method or "forward").graph
    chain = module_chain(graph, head_modules)
    if features_method:
        (output,) = [node for node in graph.nodes if node.op == "output"]
        if not chain or output.args[0] is not chain[-1]:
            raise not_a_conv_base(name)
    if not chain:
        raise not_a_conv_base(name)
    return [node.target for node in chain]


def _depth(module: nn.Module) -> int:
    return max((1 + _depth(child) for child in module.children()), default=0)


def _unit_names(paths: list[str]) -> list[str]:
    """``layer1`` stays, ``features.3`` becomes ``features_3`` (module names cannot hold dots)."""
    short = [path.rsplit(".", 1)[-1] for path in paths]
    names = [s if not s.isdigit() and short.count(s) == 1 else path.replace(".", "_") for s, path in zip(short, paths)]
    return names


def _group(units: list[tuple[str, nn.Module]]) -> nn.Module:
    return units[0][1] if len(units) == 1 else nn.Sequential(OrderedDict(units))


def blocks_of(model: nn.Module, paths: list[str]) -> nn.Sequential:
    """The conv base as named blocks, sharing the model's modules.

    Stages (modules of modules: ResNet's ``layer1``, EfficientNet's ``features.3``) are blocks under
    their own names; the plain layers before the first stage are ``stem``, those after the last
    ``top``. A model made only of plain layers (AlexNet, VGG with BatchNorm, SqueezeNet) gets
    ``block1``, ``block2``, ... each ending at a pooling layer, as Keras names VGG's blocks.
    """
    units = [(unit, model.get_submodule(path)) for unit, path in zip(_unit_names(paths), paths)]
    units = [(unit, module) for unit, module in units if not isinstance(module, nn.Identity)]
    stages = [index for index, (_, module) in enumerate(units) if _depth(module) > 1]
    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    if stages:
        first, last = stages[0], stages[-1]
        if first:
            blocks["stem"] = _group(units[:first])
        blocks.update(units[first : last + 1])
        if last + 1 < len(units):
            blocks["top"] = _group(units[last + 1 :])
    else:
        current: list[tuple[str, nn.Module]] = []
        for unit in units:
            current.append(unit)
            if isinstance(unit[1], POOLING) or unit is units[-1]:
                blocks[f"block{len(blocks) + 1}"] = _group(current)
                current = []
    return nn.Sequential(blocks)


def classifier_after(model: nn.Module, name: str, expand: Collection[str], last_path: str) -> nn.Module:
    """The rest of the model's forward after the conv base (pooling, flatten, classifier), as a module
    from the conv map to the logits, sharing the model's modules."""
    head = trace(model, name, expand)
    graph = head.graph
    ends = [node for node in graph.nodes if node.op == "call_module" and node.target == last_path]
    if len(ends) != 1:  # its forward does not run the conv base once, as forward_features does
        raise not_a_conv_base(name)
    (end,) = ends
    inputs = [node for node in graph.nodes if node.op == "placeholder"]
    with graph.inserting_before(inputs[0]):
        features = graph.placeholder("features")
    end.replace_all_uses_with(features)
    graph.eliminate_dead_code()
    if any(node.users for node in inputs):  # the classifier reads more than the conv map
        raise not_a_conv_base(name)
    for node in inputs:
        graph.erase_node(node)
    head.recompile()
    head.delete_all_unused_submodules()
    return head
