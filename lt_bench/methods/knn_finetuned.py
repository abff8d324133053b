"""The authors' k-NN probe on the **fine-tuned** features (JiahaoChen1/Pre-train-Imbalance
``trainer.py: knn_test``, run after fine-tuning): the member fine-tuning's stored val
features are the class-balanced bank, k = 200, T = 0.1, test queries its stored test
features (``lt_bench.methods.knn`` has the vote; the val split answers leave-one-out)."""

from typing import Any, ClassVar

from lt_bench.errors import InputValidationError
from lt_bench.methods._base import METHODS
from lt_bench.methods._finetune import FinetunedViewMethod


@METHODS.register()
class KNNFinetuned(FinetunedViewMethod):
    name = "knn_finetuned"
    display = "k-NN on AdaptFormer-LA features (authors')"
    defaults: ClassVar[dict[str, Any]] = {"members": "adaptformer_la", "seed_offsets": [0],
                                          "view": "centre", "k": 200, "temperature": 0.1,
                                          "bank": "val"}
    description = "the authors' k-NN probe (val bank, k = 200, T = 0.1) on fine-tuned features"

    def validate(self) -> None:
        super().validate()
        hp = self.hparams
        if hp["bank"] != "val":
            raise InputValidationError(f"method {self.name!r}: bank = {hp['bank']!r}; a "
                                       "fine-tuning stores val and test features, so the "
                                       "bank is 'val'")
        if isinstance(hp["k"], bool) or not isinstance(hp["k"], int) or hp["k"] < 1 \
                or not isinstance(hp["temperature"], (int, float)) or hp["temperature"] <= 0:
            raise InputValidationError(f"method {self.name!r}: k must be an integer >= 1 and "
                                       f"temperature > 0, got {hp['k']!r}, {hp['temperature']!r}")
