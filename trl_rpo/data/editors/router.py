"""`EditorRouter`: one editor per instruction kind, chained; `edit_masks`: the optional region report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

from ..masks import union_masks
from ..schema import EditInstruction, coerce_edit_batch


def edit_masks(editor: Any, n: int) -> list[Image.Image | None]:
    """The masks of the region each of an editor's last `n` outputs changed (its `last_masks`), else n Nones.

    The editor protocol's optional per-call state, like `last_methods`: an editor that knows where it edited
    (inpainting with paste-back, a pixel editor) sets `last_masks` to one mode "L" mask or None per image.
    """
    masks = getattr(editor, "last_masks", None)
    if isinstance(masks, (list, tuple)) and len(masks) == n:
        return [mask if isinstance(mask, Image.Image) else None for mask in masks]
    return [None] * n


def _editor_name(editor: Any) -> str:
    return str(getattr(editor, "name", None) or type(editor).__name__)


class EditorRouter:
    """Dispatches each instruction to an editor by its `kind`, chaining editors when an image needs several.

    An image's instructions are split into runs of consecutive instructions that route to the same editor; the
    runs are applied in order, each editor receiving the previous one's output (so `[recolor, style]` with
    `{"recolor": inpaint, "style": img2img}` inpaints, then restyles the inpainted image). Within a run all the
    instructions go to the editor in one call, and images are batched: step k of every image is sent to its
    editor in one call per editor.

    An instruction whose kind (None included) has no route goes to `default`; with no default the image's edit
    fails (None). If any editor returns None for an image, the image's result is None.

    Which editors edited each image: after every call, `last_methods[i]` is the "+"-joined names of the editors
    that were applied to image i, in order (e.g. "inpaint+img2img"), "" when no route matched. A dataset builder
    should record `last_methods[i]` as the row's `edit_method` when the editor has the attribute, and `name`
    otherwise; `name` itself is "router(<sorted editor names>)". `last_masks[i]` is the union of the chained
    editors' masks (`edit_masks`), None when one of them edits anywhere. Both are per-call state: read them
    before the next call.
    """

    def __init__(self, routes: dict[str, Any], default: Any | None = None):
        if not isinstance(routes, dict) or not all(isinstance(k, str) for k in routes):
            raise TypeError(f"routes must be a dict from instruction kind (str) to editor, got {routes!r}")
        for kind, editor in [*routes.items(), *([("default", default)] if default is not None else [])]:
            if not callable(editor):
                raise TypeError(
                    f"the editor for {kind!r} must be callable (images, instructions, prompts), got {editor!r}"
                )
        if not routes and default is None:
            raise ValueError("an EditorRouter needs at least one route or a default editor")
        self.routes = dict(routes)
        self.default = default
        self.last_methods: list[str] = []

    @property
    def name(self) -> str:
        editors = [*self.routes.values(), *([self.default] if self.default is not None else [])]
        return f"router({'+'.join(sorted({_editor_name(e) for e in editors}))})"

    def route(self, instruction: EditInstruction) -> Any | None:
        """The editor of an instruction: its kind's route, else the default (None when neither exists)."""
        if instruction.kind is not None and instruction.kind in self.routes:
            return self.routes[instruction.kind]
        return self.default

    def plan(self, instructions: Sequence[EditInstruction]) -> list[tuple[Any, list[EditInstruction]]] | None:
        """The editor runs of one image's instructions, in order; None if an instruction has no editor."""
        runs: list[tuple[Any, list[EditInstruction]]] = []
        for instruction in instructions:
            editor = self.route(instruction)
            if editor is None:
                return None
            if runs and runs[-1][0] is editor:
                runs[-1][1].append(instruction)
            else:
                runs.append((editor, [instruction]))
        return runs

    def __call__(
        self,
        images: Sequence[Image.Image],
        instructions: Sequence[Sequence[EditInstruction | dict | str]],
        prompts: Sequence[str] | None = None,
    ) -> list[Image.Image | None]:
        """The edited images, one per input; None where no editor matched or an editor failed."""
        images, instructions, prompts = coerce_edit_batch(images, instructions, prompts)
        plans = [self.plan(items) for items in instructions]
        current: list[Image.Image | None] = [image if plan is not None else None for image, plan in zip(images, plans)]
        methods: list[list[str]] = [[] for _ in images]
        masks: list[list[Image.Image | None]] = [[] for _ in images]
        for step in range(max((len(p) for p in plans if p is not None), default=0)):
            groups: dict[int, tuple[Any, list[int]]] = {}
            for i, plan in enumerate(plans):
                if plan is not None and current[i] is not None and step < len(plan):
                    editor = plan[step][0]
                    groups.setdefault(id(editor), (editor, []))[1].append(i)
            for editor, indices in groups.values():
                outputs = editor(
                    [current[i] for i in indices], [plans[i][step][1] for i in indices], [prompts[i] for i in indices]
                )
                if len(outputs) != len(indices):
                    raise RuntimeError(
                        f"editor {_editor_name(editor)!r} returned {len(outputs)} images for {len(indices)} inputs"
                    )
                used = edit_masks(editor, len(indices))
                for i, output, mask in zip(indices, outputs, used):
                    methods[i].append(_editor_name(editor))
                    masks[i].append(mask)
                    current[i] = output
        self.last_methods = ["+".join(names) for names in methods]
        self.last_masks = [union_masks(m) if image is not None else None for m, image in zip(masks, current)]
        return current
