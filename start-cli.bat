@echo off
rem Chat with Qwen in this terminal (the same conversations as the web page).
rem Sets everything up on first run, like start.bat. Extra arguments go to app.py.
call "%~dp0start.bat" --cli %*
