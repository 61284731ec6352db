"""The VAT-rate API served by every region (see app/main.py)."""
