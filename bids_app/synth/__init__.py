"""bids_app.synth"""
