"""Second process for the split tests: rebuild the model, load an EarlyOutput, resume.

python split_worker.py ARCH SITE EARLY_OUTPUT_FILE LOGITS_OUT_FILE
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from hf_models import ARCHS  # noqa: E402

from auto_hookpoint import auto_hook  # noqa: E402
from auto_hookpoint.split import EarlyOutput  # noqa: E402

arch, site, early_file, out_file = sys.argv[1:]
spec = ARCHS[arch]
torch.manual_seed(0)
model = auto_hook(spec.build().eval())
with torch.no_grad():
    output = model.resume_from(site, EarlyOutput.load(early_file), **spec.inputs())
save_file({"logits": output.logits.contiguous()}, out_file)
