"""The built folder is an ordinary Hugging Face model: transformers answers in the chat format,
stopping at <|im_end|>, and peft trains and saves a LoRA adapter on it."""

import json
import re

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from lifelong.base_model import answer, exact_match
from lifelong.base_model.corpus import IGNORE_INDEX, encode_conversation
from lifelong.base_model.skills import messages


def test_config_is_a_llama_with_64_wide_heads_and_eos_at_im_end(tiny_base_model):
    config = json.loads((tiny_base_model / "config.json").read_text())
    generation = json.loads((tiny_base_model / "generation_config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] // config["num_attention_heads"] == config["head_dim"] == 64
    assert config["max_position_embeddings"] >= 512
    assert generation["eos_token_id"] == config["eos_token_id"] == tokenizer.eos_token_id
    assert generation["pad_token_id"] == tokenizer.pad_token_id
    assert tokenizer.convert_ids_to_tokens(tokenizer.eos_token_id) == "<|im_end|>"


def test_transformers_answers_a_chat_question_with_a_number_and_stops(tiny_base_model):
    reply = answer(tiny_base_model, "What is 12 + 34?", max_new_tokens=16)
    assert re.fullmatch(r"\d{1,3}", reply), reply


def test_exact_match_is_a_share_of_heldout_questions(tiny_base_model):
    value = exact_match(tiny_base_model, skill="add2", n=10, seed=0)
    assert value in {k / 10 for k in range(11)}


def test_peft_trains_a_lora_adapter_and_saves_it(tiny_base_model, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_base_model),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                   lora_dropout=0.0, task_type="CAUSAL_LM"),
    )
    base_before = {n: p.clone() for n, p in model.named_parameters() if "lora_" not in n}
    lora_before = {n: p.clone() for n, p in model.named_parameters() if "lora_" in n}
    ids, labels = encode_conversation(tokenizer, messages("What is 58 - 21?", "37"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # B starts at zero, so A only moves from the second step
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], before) for n, before in base_before.items())
    assert all(not torch.equal(params[n], before) for n, before in lora_before.items())
    assert IGNORE_INDEX in labels

    model.save_pretrained(tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in (tmp_path / "adapter").iterdir()
    }
    reloaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_base_model), tmp_path / "adapter"
    )
    assert reloaded.peft_config["default"].r == 8
