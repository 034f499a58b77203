"""Shared fixtures: maps, scenes and renderers are built once per session (they take seconds)."""

from __future__ import annotations

import pytest
import torch

from mirage_env.renderer import GroundTruthRenderer
from mirage_env.road_map import RoadMap
from mirage_env.scene import dress_scene

torch.set_num_threads(2)

# A straight road of 20 m then a left-hand quarter circle of radius 20 m (OpenDRIVE
# curvature > 0 turns left), one 3.5 m driving lane each way, sidewalks and a centre line.
LEFT_TURN_XODR = """<?xml version="1.0" encoding="UTF-8"?>
<OpenDRIVE>
  <header revMajor="1" revMinor="4" name="left_turn"/>
  <road name="r" length="51.41592653589793" id="1" junction="-1">
    <link/>
    <planView>
      <geometry s="0" x="0" y="0" hdg="0" length="20"><line/></geometry>
      <geometry s="20" x="20" y="0" hdg="0" length="31.41592653589793"><arc curvature="0.05"/></geometry>
    </planView>
    <lanes>
      <laneSection s="0">
        <left>
          <lane id="2" type="sidewalk" level="false"><width sOffset="0" a="2.0" b="0" c="0" d="0"/></lane>
          <lane id="1" type="driving" level="false"><width sOffset="0" a="3.5" b="0" c="0" d="0"/></lane>
        </left>
        <center>
          <lane id="0" type="none" level="false">
            <roadMark sOffset="0" type="broken" weight="standard" color="yellow" width="0.15"/>
          </lane>
        </center>
        <right>
          <lane id="-1" type="driving" level="false"><width sOffset="0" a="3.5" b="0" c="0" d="0"/></lane>
          <lane id="-2" type="sidewalk" level="false"><width sOffset="0" a="2.0" b="0" c="0" d="0"/></lane>
        </right>
      </laneSection>
    </lanes>
  </road>
</OpenDRIVE>
"""


@pytest.fixture(scope="session")
def town01() -> RoadMap:
    return RoadMap.town01()


@pytest.fixture(scope="session")
def town01_renderer(town01) -> GroundTruthRenderer:
    return GroundTruthRenderer(dress_scene(town01, seed=0))
