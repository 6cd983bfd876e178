"""bids_app.report"""
