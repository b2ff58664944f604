"""The adapted-model catalog: mainstream models, the builds published for each vendor, the device memory
they need per precision, and the conversion recipes (read from ``libs/catalog/models.yaml``).

Every role that may read may read it (an invoke-only key may not: it only calls ``/v1/endpoints/``). A
model is run by submitting ``{"model": "<id>", "hardware": {"type": "any"}}`` to ``POST /v1/workloads``;
a recipe by ``{"recipe": "<id>", "recipe_args": {...}}``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from libs.catalog.models import load_models, model_view
from libs.schemas.models import ModelList, ModelView
from services.gateway.auth import CurrentPrincipal
from services.gateway.openapi import problem
from services.gateway.problems import ProblemError

router = APIRouter(tags=["models"])
_EXAMPLE = model_view(load_models().models[0]).model_dump(mode="json")
_LIST_EXAMPLE = {"items": [_EXAMPLE], "recipes": [load_models().recipes[0].model_dump(mode="json")]}
ModelId = Annotated[str, Path(max_length=64, description="Catalog model id.", examples=["qwen2.5-7b-instruct"])]


@router.get("/v1/models", response_model=ModelList,
            responses={200: {"content": {"application/json": {"example": _LIST_EXAMPLE}}}},
            summary="The adapted-model catalog: per model the builds published for each vendor (image, command, "
                    "runtime requirement, sources) and device memory per precision; the conversion recipes")
async def list_models(principal: CurrentPrincipal) -> ModelList:
    catalog = load_models()
    return ModelList(items=[model_view(m) for m in catalog.models], recipes=catalog.recipes)


@router.get("/v1/models/{model_id}", response_model=ModelView, summary="One model of the catalog",
            responses={200: {"content": {"application/json": {"example": _EXAMPLE}}},
                       404: problem("No such model", "Model not found", "no model 'qwen9-1t' in the catalog")})
async def get_model(principal: CurrentPrincipal, model_id: ModelId) -> ModelView:
    entry = load_models().model(model_id)
    if entry is None:
        raise ProblemError(404, "Model not found", f"no model {model_id!r} in the catalog")
    return model_view(entry)
