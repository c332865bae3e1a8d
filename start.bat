@echo off
rem qwen-chat launcher for Windows.
rem   start.bat [app args...]            install what is needed (first run only), then start the app
rem   start.bat --test [pytest args...]  install the test requirements, then run pytest
rem This only finds a Python 3.10+ (the py launcher, then python) and hands over to
rem qwen_chat\bootstrap.py (shared with start.sh), which creates .venv next to this file,
rem installs the CPU build of torch and the requirements, then starts app.py.
chcp 65001 >nul
setlocal EnableExtensions DisableDelayedExpansion
cd /d "%~dp0"

set "VERCHK=import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)"
set "PY="
py -3 -c "%VERCHK%" >nul 2>&1
if not errorlevel 1 set "PY=py -3"
if defined PY goto have_python
python -c "%VERCHK%" >nul 2>&1
if not errorlevel 1 set "PY=python"
if defined PY goto have_python

echo.
echo Python 3.10 or newer is needed, but was not found.
echo Install it with:  winget install Python.Python.3.12
echo or from https://www.python.org/downloads/ (tick "Add python.exe to PATH" in the installer),
echo then run start.bat again.
echo.
echo 需要 Python 3.10 或更高版本，但没有找到。
echo 请运行：winget install Python.Python.3.12
echo 或从 https://www.python.org/downloads/ 下载安装（安装时请勾选 "Add python.exe to PATH"），
echo 然后重新运行 start.bat。
echo.
if /i not "%~1"=="--test" pause
exit /b 1

:have_python
%PY% -m qwen_chat.bootstrap %*
set "RC=%ERRORLEVEL%"
if "%RC%"=="0" exit /b 0
rem Keep the window open when started by a double-click, so the message above can be read.
if /i not "%~1"=="--test" pause
exit /b %RC%
