"""bids_app.cli"""
