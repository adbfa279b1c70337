"""Turn-taking: end-of-turn detection (Smart Turn) and the barge-in policy."""

from .smart_turn import (
                         EndOfTurn,
                         MockTurnModel,
                         SmartTurnModel,
                         build_end_of_turn,
                         find_turn_model,
                         load_turn_model,
                         packaged_turn_model,
)

__all__ = ["EndOfTurn", "MockTurnModel", "SmartTurnModel", "build_end_of_turn", "find_turn_model",
           "load_turn_model", "packaged_turn_model"]
