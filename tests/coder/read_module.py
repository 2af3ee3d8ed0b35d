"""Prints an HCL2 file (a Terraform module) as JSON: `python read_module.py main.tf`."""

import json
import sys

import hcl2

with open(sys.argv[1]) as f:
    print(json.dumps(hcl2.load(f)))
