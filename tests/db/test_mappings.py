from __future__ import annotations

from proxy.db import mappings


async def test_team_for_prefers_the_key_then_the_project(sm):
    assert await mappings.team_for(sm, fingerprint="fp1", project="proj_1") == "unassigned"
    await mappings.add_project_team(sm, "proj_1", "blue")
    assert await mappings.team_for(sm, fingerprint="fp1", project="proj_1") == "blue"
    await mappings.add_key_team(sm, "fp1", "sk-...1111", "red", "ci")
    assert await mappings.team_for(sm, fingerprint="fp1", project="proj_1") == "red"
    assert await mappings.team_for(sm, fingerprint="fp2", project="proj_1") == "blue"
    assert await mappings.team_for(sm, fingerprint=None, project="proj_1") == "blue"
    assert await mappings.team_for(sm, fingerprint="fp1", project=None) == "red"
    assert await mappings.team_for(sm, fingerprint=None, project=None) == "unassigned"


async def test_key_and_project_mappings_upsert_list_and_remove(sm):
    await mappings.add_key_team(sm, "fp1", "sk-...1111", "red", "ci")
    await mappings.add_key_team(sm, "fp1", "sk-...1111", "green", None)
    await mappings.add_key_team(sm, "fp2", "sk-...2222", "blue")
    keys = await mappings.list_key_teams(sm)
    assert [(k.key_fingerprint, k.team, k.label) for k in keys] == [
        ("fp2", "blue", None),
        ("fp1", "green", None),
    ]
    assert await mappings.remove_key_team(sm, "fp1")
    assert not await mappings.remove_key_team(sm, "fp1")
    assert [k.key_fingerprint for k in await mappings.list_key_teams(sm)] == ["fp2"]

    await mappings.add_project_team(sm, "proj_b", "blue")
    await mappings.add_project_team(sm, "proj_a", "red")
    await mappings.add_project_team(sm, "proj_a", "green")
    projects = await mappings.list_project_teams(sm)
    assert [(p.project, p.team) for p in projects] == [("proj_a", "green"), ("proj_b", "blue")]
    assert await mappings.remove_project_team(sm, "proj_a")
    assert not await mappings.remove_project_team(sm, "proj_a")


async def test_every_mapping_change_moves_the_version(sm):
    from proxy.db.mappings import mapping_version

    versions = [await mapping_version(sm)]
    await mappings.add_key_team(sm, "fp-v", "sk-...vvvv", "red")
    versions.append(await mapping_version(sm))
    await mappings.remove_key_team(sm, "fp-v")
    versions.append(await mapping_version(sm))
    await mappings.add_project_team(sm, "proj_v", "blue")
    versions.append(await mapping_version(sm))
    await mappings.remove_project_team(sm, "proj_v")
    versions.append(await mapping_version(sm))

    assert versions == sorted(set(versions)) and len(versions) == 5
