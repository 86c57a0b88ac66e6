"""syncguard training: dataset -> fit -> backtest -> register."""
