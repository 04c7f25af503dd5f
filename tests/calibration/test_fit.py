import random

from proxy.accounting.estimate.basis import Basis
from proxy.calibration.fit import fit_constants, loss
from proxy.calibration.observations import Observation

TRUE = {"base_prompt": 24, "per_user_message": 4, "file_search_tool": 789, "image_tiles": 6}
PRIOR = {"base_prompt": 100, "per_user_message": 4, "file_search_tool": 500, "image_tiles": 3}


def observe(run: int, offset: int, noise: int = 0, **counts: int) -> Observation:
    basis = Basis.of(offset, **counts)
    return Observation(f"run{run}", "gpt-4o", "prompt", basis.value(TRUE) + noise, basis)


def test_recovers_the_constants_that_made_the_data():
    rng = random.Random(4)
    obs = [
        observe(
            i,
            rng.randint(5, 300),
            base_prompt=1,
            per_user_message=rng.randint(1, 4),
            file_search_tool=rng.randint(0, 1),
        )
        for i in range(40)
    ]

    fitted = fit_constants(obs, PRIOR)

    assert {k: fitted[k] for k in ("base_prompt", "per_user_message", "file_search_tool")} == {
        "base_prompt": 24,
        "per_user_message": 4,
        "file_search_tool": 789,
    }
    # Nothing in the data involves image_tiles: it keeps its prior value.
    assert fitted["image_tiles"] == 3
    assert all(isinstance(v, int) for v in fitted.values())


def test_a_wild_outlier_barely_moves_the_fit():
    rng = random.Random(5)
    obs = [
        observe(i, rng.randint(5, 300), base_prompt=1, per_user_message=rng.randint(1, 4))
        for i in range(30)
    ]
    obs.append(observe(99, 50, noise=40_000, base_prompt=1, per_user_message=1))

    fitted = fit_constants(obs, PRIOR)

    assert (fitted["base_prompt"], fitted["per_user_message"]) == (24, 4)


def test_constants_that_always_come_together_stay_near_their_prior_split():
    # Every observation has one base prompt and one user message: only their sum is known.
    obs = [observe(i, 10 * i, base_prompt=1, per_user_message=1) for i in range(1, 6)]

    fitted = fit_constants(obs, {**PRIOR, "base_prompt": 20, "per_user_message": 4})

    assert fitted["base_prompt"] + fitted["per_user_message"] == 28
    assert loss(obs, fitted) == 0


def test_no_observation_gives_back_the_prior():
    assert fit_constants([], PRIOR) == PRIOR
