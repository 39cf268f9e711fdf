"""The shared capture → solve → sandwich chain of the chain tests (test_capture_store, test_solve_store,
test_sandwich_training, test_chain_state): built once per session by conftest.py's ``chain`` fixture —
three progressive steps on a tiny trained base — and what those tests read from it."""

from __future__ import annotations

from pathlib import Path

ORDER = [3, 1, 4, 0, 2]  # step 1 replaces single block 3, step 2 double block 1, step 3 the last block


def build_chain(tmp_path_factory) -> dict:
    """Three chain steps (capture, least-squares solve, 100-step sandwich each) in a fresh folder; the
    tests run with it as their working directory (the stages' relative paths)."""
    from tiny import digit_captions, tiny_params, tiny_workdir

    from fastflux_core.capture import capture_step
    from fastflux_core.chain import ChainState, load_solution, make_plan
    from fastflux_core.sandwich import train_sandwich
    from fastflux_core.solve import save_solution, solve_store
    from fastflux_core.store import StoreReader

    root, mp = tiny_workdir(tmp_path_factory, "chain", train_steps=150)
    try:
        params = tiny_params(**{"sandwich.train_steps": 100})
        plan = make_plan(ORDER, 3, 5, params.sandwich.width)
        cal, train = digit_captions(name="calibration"), digit_captions(name="training")
        states, stores, records = [ChainState()], [], []
        for step in plan:
            out = root / f"capture{step.k}"
            out.mkdir()
            capture_step(params, step, states[-1], cal, train, f"b{step.block}", out)
            store = StoreReader(out / "calibration.zarr")
            sols, metrics = solve_store(store, params.solve.ridge, 7)
            save_solution(root / f"solve{step.k}.safetensors", sols)
            state, record = train_sandwich(params, step, states[-1], load_solution(root / f"solve{step.k}.safetensors"),
                                           StoreReader(out / "training.zarr"), train)
            states.append(state)
            stores.append((store, StoreReader(out / "training.zarr")))
            records.append((metrics, record, sols))
    finally:
        mp.undo()
    return {"root": root, "params": params, "plan": plan, "states": states, "stores": stores, "records": records,
            "cal": cal, "train": train}


def store_items(store) -> set[tuple[str, int]]:
    """(prompt, seed) of every sample of a store."""
    prompts = store.attrs["prompts"]
    return {(prompts[int(p)], int(s)) for p, s in zip(store.read("prompt"), store.read("seed"))}


def boundary_states(params, step, state, store, embeds):
    """The sandwich's boundary states x_u, y_d of a step, recomputed from a store's inputs."""
    import torch

    from fastflux_core.boundary import BoundaryStates
    from fastflux_core.chain import load_solution
    from fastflux_core.sandwich import prepare_sandwich

    adapter, _, target = prepare_sandwich(params, step, state, load_solution(Path(f"solve{step.k}.safetensors")))
    return BoundaryStates(store, embeds, adapter, target, step.sandwich[0], 7, torch.device("cpu"))
