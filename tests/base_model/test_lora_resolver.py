"""vLLM's own filesystem LoRA resolver: a server that was never told about an adapter serves it on
the first request naming it, from a subfolder of VLLM_LORA_RESOLVER_CACHE_DIR of that name.

What vLLM 0.32 needs (vllm/plugins/lora_resolvers/filesystem_resolver.py, and
`OpenAIServingModels.resolve_lora`, called from `_check_model` on every request whose model is
neither the base model nor an adapter it has loaded):

- VLLM_LORA_RESOLVER_CACHE_DIR=<an existing folder> (VLLM_PLUGIN_LORA_CACHE_DIR is no vLLM
  variable: with only that one set, nothing resolves; a folder that does not exist stops vLLM
  from starting). VLLM_PLUGINS may name lora_filesystem_resolver; unset loads every general
  plugin, this one included.
- VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 or true (any case); without it the resolver is never asked.
- adapter_config.json's base_model_name_or_path equal, as a string, to vLLM's --model (its
  model_config.model: the path, not --served-model-name). Otherwise, as for a name with no folder,
  the client gets the same 404 "The model `x` does not exist".

One server for the module (2 cores: one vLLM at a time), started with an empty cache folder:
every adapter below is written after it started.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

pytestmark = pytest.mark.integration

PROMPT = "What is 12 + 34?"


@dataclass
class Resolving:
    """The module's vLLM: its URL, its resolver's cache folder, its log."""

    url: str
    cache: Path
    log: Path

    def complete(self, model: str) -> httpx.Response:
        return httpx.post(
            f"{self.url}/v1/completions",
            json={"model": model, "prompt": PROMPT, "max_tokens": 1, "temperature": 0,
                  "logprobs": 5},
            timeout=120,
        )

    def top_logprobs(self, model: str) -> dict[str, float]:
        """The five likeliest first tokens and their log-probabilities under `model`."""
        response = self.complete(model)
        assert response.status_code == 200, response.text
        assert response.json()["model"] == model
        return response.json()["choices"][0]["logprobs"]["top_logprobs"][0]

    def models(self) -> list[str]:
        return [card["id"] for card in httpx.get(f"{self.url}/v1/models", timeout=30).json()["data"]]

    def resolutions(self, name: str) -> int:
        """How many times the server logged resolving and loading `name`."""
        line = re.compile(rf"Resolved and loaded LoRA adapter '{re.escape(name)}' using")
        return len(line.findall(self.log.read_text(errors="replace")))


@pytest.fixture(scope="module")
def resolving(start_vllm, tiny_base_model: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Resolving]:
    """The shared helper's vLLM (VLLM_ALLOW_RUNTIME_LORA_UPDATING=1, --max-loras 4) with the
    filesystem resolver on an empty cache folder."""
    cache = tmp_path_factory.mktemp("adapters") / "cache"
    cache.mkdir()
    log_dir = tmp_path_factory.mktemp("vllm_resolver")
    with contextlib.ExitStack() as stack:
        # serve_vllm copies os.environ when it starts vLLM: set the variables for that moment.
        with pytest.MonkeyPatch.context() as env:
            env.setenv("VLLM_PLUGINS", "lora_filesystem_resolver")
            env.setenv("VLLM_LORA_RESOLVER_CACHE_DIR", str(cache))
            url = stack.enter_context(start_vllm(tiny_base_model, log_dir))
        yield Resolving(url=url, cache=cache, log=log_dir / "vllm.log")


def write_adapter(folder: Path, base_model: Path, *, seed: int) -> Path:
    """A peft LoRA on `base_model` with random A and B (not a no-op: it moves the logits), saved
    as peft saves it: base_model_name_or_path is the string `base_model` was loaded from."""
    torch.manual_seed(seed)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(base_model)),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                   task_type="CAUSAL_LM", init_lora_weights=False),
    )
    model.save_pretrained(folder)
    return folder


def base_model_name_or_path(folder: Path) -> str:
    return json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]


def assert_not_found(response: httpx.Response, name: str) -> None:
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert error["type"] == "NotFoundError"
    assert error["message"] == f"The model `{name}` does not exist. Valid aliases: base."


def test_an_adapter_folder_in_the_cache_is_served_on_the_first_request_naming_it(
        resolving, tiny_base_model):
    write_adapter(resolving.cache / "v0001", tiny_base_model, seed=1)
    assert "v0001" not in resolving.models()

    first = resolving.top_logprobs("v0001")  # no /v1/load_lora_adapter before it

    assert resolving.resolutions("v0001") == 1
    assert "v0001" in resolving.models()
    assert resolving.top_logprobs("v0001") == pytest.approx(first, abs=1e-3)
    # The adapter's weights answer, not the base model's ...
    assert first != pytest.approx(resolving.top_logprobs("base"), abs=0.05)
    # ... the same as when the folder is loaded explicitly under another name.
    loaded = httpx.post(f"{resolving.url}/v1/load_lora_adapter",
                        json={"lora_name": "explicit-v0001",
                              "lora_path": str(resolving.cache / "v0001")}, timeout=60)
    assert loaded.status_code == 200, loaded.text
    assert resolving.top_logprobs("explicit-v0001") == pytest.approx(first, abs=1e-3)


def test_a_symlinked_folder_is_served_under_the_link_name(resolving, tiny_base_model):
    # The version folder keeps its name; the served name carries the checksum.
    real = write_adapter(resolving.cache.parent / "v0002", tiny_base_model, seed=2)
    link = resolving.cache / "v0002-1a2b3c4d5e6f"
    link.symlink_to(Path("..") / real.name)

    response = resolving.complete(link.name)

    assert response.status_code == 200, response.text
    assert response.json()["model"] == link.name
    assert link.name in resolving.models()
    assert "v0002" not in resolving.models()
    assert resolving.top_logprobs(link.name) != pytest.approx(resolving.top_logprobs("base"),
                                                              abs=0.05)


def test_loading_a_name_the_resolver_loaded_is_refused_unless_in_place(resolving, tiny_base_model):
    """A gateway that loads the champion into a server that already resolved that name gets
    vLLM's 400 "has already been loaded", as for any name loaded twice."""
    folder = write_adapter(resolving.cache / "v0006", tiny_base_model, seed=6)
    assert resolving.complete("v0006").status_code == 200

    again = httpx.post(f"{resolving.url}/v1/load_lora_adapter",
                       json={"lora_name": "v0006", "lora_path": str(folder)}, timeout=60)
    in_place = httpx.post(f"{resolving.url}/v1/load_lora_adapter",
                          json={"lora_name": "v0006", "lora_path": str(folder),
                                "load_inplace": True}, timeout=60)

    assert again.status_code == 400, again.text
    assert "has already been loaded" in again.json()["error"]["message"]
    assert in_place.status_code == 200, in_place.text


def test_a_name_with_no_folder_gets_404_model_does_not_exist(resolving):
    response = resolving.complete("v0404-000000000000")

    assert_not_found(response, "v0404-000000000000")
    assert "v0404-000000000000" not in resolving.models()


def test_the_resolver_matches_base_model_name_or_path_to_the_model_path_not_the_served_name(
        resolving, tiny_base_model, monkeypatch):
    """vLLM compares adapter_config.json's base_model_name_or_path with --model as a string:
    one naming `base` (the served name) is refused with the plain 404. Our trainer writes the
    resolved folder there whatever path it was given (the settings' default data_dir is
    relative; peft wrote it as given, and no daemon-trained adapter resolved), so both of its
    adapters are served."""
    from lifelong.adapters import LoraTrainingConfig
    from lifelong.adapters.artifact import base_model_identity
    from lifelong.adapters.artifact import write_adapter as write_artifact
    from lifelong.adapters.lora_trainer import load_model

    def trained_as_the_daemon_does(version: str, base_model_dir: Path) -> Path:
        config = LoraTrainingConfig(rank=4, alpha=8, target_modules=("q_proj", "v_proj"))
        model, _ = load_model(base_model_dir, parent_dir=None, config=config, seed=0,
                              device=torch.device("cpu"))
        folder, _ = write_artifact(
            model, adapters_dir=resolving.cache, version=version, parent_version=None,
            base_model=base_model_identity(base_model_dir), data_watermark=0, data={},
            feedback_ids=[], methods=["sft"], hyperparameters={}, seed=0, metrics={})
        return folder

    monkeypatch.chdir(tiny_base_model.parent)
    relative = trained_as_the_daemon_does("v0003", Path(tiny_base_model.name))
    same_path = trained_as_the_daemon_does("v0004", tiny_base_model)
    served_name = write_adapter(resolving.cache / "named-base", tiny_base_model, seed=3)
    config = json.loads((served_name / "adapter_config.json").read_text())
    (served_name / "adapter_config.json").write_text(
        json.dumps({**config, "base_model_name_or_path": "base"}))

    resolved = str(tiny_base_model.resolve())
    assert base_model_name_or_path(relative) == base_model_name_or_path(same_path) == resolved
    assert_not_found(resolving.complete("named-base"), "named-base")
    assert resolving.complete("v0003").status_code == 200
    assert resolving.complete("v0004").status_code == 200
    assert resolving.resolutions("named-base") == 0


def test_simultaneous_first_requests_are_all_served_and_load_the_adapter_once(
        resolving, tiny_base_model):
    write_adapter(resolving.cache / "v0005", tiny_base_model, seed=5)

    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: resolving.complete("v0005"), range(4)))

    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
    assert len({json.dumps(r.json()["choices"][0]["logprobs"]) for r in responses}) == 1
    deadline = time.monotonic() + 10  # the log line may trail the answer
    while resolving.resolutions("v0005") == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert resolving.resolutions("v0005") == 1
    assert resolving.models().count("v0005") == 1


def test_an_adapter_evicted_past_max_loras_is_reloaded_from_its_folder(
        resolving, tiny_base_model):
    """The server keeps every resolved name; with --max-loras 4 (and max_cpu_loras = 4) the
    engine evicts, and reloads from the folder the next time the name is asked for."""
    names = [f"evict-{n}" for n in range(6)]
    for seed, name in enumerate(names, start=10):
        write_adapter(resolving.cache / name, tiny_base_model, seed=seed)
    first = resolving.top_logprobs(names[0])
    for name in names[1:]:
        resolving.top_logprobs(name)

    assert resolving.top_logprobs(names[0]) == pytest.approx(first, abs=1e-3)
    assert resolving.resolutions(names[0]) == 1
    assert set(names) <= set(resolving.models())


def test_the_cache_folder_is_no_boundary_an_absolute_path_as_the_name_is_served(
        resolving, tiny_base_model, tmp_path):
    """The resolver joins the cache folder and the requested name: an absolute path replaces
    the folder. Anyone who can name a model to vLLM can load any adapter folder on its disk
    that was trained on the base model; only the gateway's own names must reach vLLM."""
    outside = write_adapter(tmp_path / "outside", tiny_base_model, seed=7)

    response = resolving.complete(str(outside))

    assert response.status_code == 200, response.text
    assert str(outside) in resolving.models()
