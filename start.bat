@echo off
chcp 65001 >nul
setlocal EnableExtensions DisableDelayedExpansion
rem qwen-chat launcher for Windows.
rem   start.bat [app args...]            install what is needed (first run only), then start the app
rem   start.bat --test [pytest args...]  install the test requirements, then run pytest
rem Everything is installed into .venv next to this file.

cd /d "%~dp0"

set "TORCH_VERSION=2.13.0"
set "TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu"
set "VPY=.venv\Scripts\python.exe"
set "PIPOPT=--disable-pip-version-check"
set "VERCHK=import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)"
rem HASHPY (check or write) STAMP FILES... : compare / store the sha256 of the requirement files.
set "HASHPY=import hashlib,os,sys; h=hashlib.sha256(); [h.update(open(f,'rb').read()) for f in sys.argv[3:]]; d=h.hexdigest(); p=sys.argv[2]; w=sys.argv[1]=='write'; w and open(p,'w').write(d+chr(10)); sys.exit(0 if w or (os.path.exists(p) and open(p).read().strip()==d) else 1)"

rem ---- arguments: "--test" first selects test mode -------------------------
set "MODE=app"
set "REQ=requirements.txt"
set "REQ_FILES=requirements.txt"
set "ARGS=%*"
if /i not "%~1"=="--test" goto args_done
set "MODE=dev"
set "REQ=requirements-dev.txt"
set "REQ_FILES=requirements-dev.txt requirements.txt"
set "ARGS="
:next_arg
shift
if "%~1"=="" goto args_done
set "ARGS=%ARGS% %1"
goto next_arg
:args_done

rem ---- virtual environment ---------------------------------------------------
if not exist "%VPY%" goto make_venv
"%VPY%" -c "%VERCHK%" >nul 2>&1
if not errorlevel 1 goto venv_ok
echo [qwen-chat] The existing .venv does not work; recreating it.
rmdir /s /q .venv

:make_venv
set "PY="
py -3 -c "%VERCHK%" >nul 2>&1
if not errorlevel 1 set "PY=py -3"
if defined PY goto have_python
python -c "%VERCHK%" >nul 2>&1
if not errorlevel 1 set "PY=python"
if defined PY goto have_python

echo.
echo Python 3.10 or newer is needed, but was not found.
echo Install it from https://www.python.org/downloads/
echo (tick "Add python.exe to PATH" in the installer), then run start.bat again.
echo.
echo 需要 Python 3.10 或更高版本，但没有找到。
echo 请从 https://www.python.org/downloads/ 下载安装
echo （安装时请勾选 "Add python.exe to PATH"），然后重新运行 start.bat。
echo.
pause
exit /b 1

:have_python
echo [qwen-chat] Creating virtual environment .venv with %PY% ...
%PY% -m venv .venv
if not errorlevel 1 goto venv_ok
if exist .venv rmdir /s /q .venv
echo.
echo Could not create the virtual environment (.venv); see the messages above.
echo 无法创建虚拟环境 (.venv)，请查看上面的信息。
echo.
pause
exit /b 1

:venv_ok

rem ---- dependencies (only when requirements changed) ------------------------
set "STAMP=.venv\.installed-%MODE%"
"%VPY%" -c "%HASHPY%" check "%STAMP%" %REQ_FILES%
if not errorlevel 1 goto run

if exist "%STAMP%" del /q "%STAMP%"
echo [qwen-chat] Installing dependencies into .venv (first run or requirements changed; this can take several minutes)
"%VPY%" -m pip install %PIPOPT% -q --upgrade pip >nul 2>&1
call :install_torch
if errorlevel 1 goto install_failed
echo [qwen-chat] Installing %REQ%
"%VPY%" -m pip install %PIPOPT% -r %REQ%
if errorlevel 1 goto install_failed
"%VPY%" -c "%HASHPY%" write "%STAMP%" %REQ_FILES%
rem requirements-dev.txt includes requirements.txt, so the app is installed too.
if "%MODE%"=="dev" "%VPY%" -c "%HASHPY%" write .venv\.installed-app requirements.txt
echo [qwen-chat] Dependencies installed.

rem ---- run ------------------------------------------------------------------
:run
if "%MODE%"=="dev" goto run_tests
"%VPY%" app.py %ARGS%
set "RC=%ERRORLEVEL%"
if "%RC%"=="0" exit /b 0
echo.
echo The app stopped with an error (exit code %RC%); see the messages above.
echo 程序出错退出（退出码 %RC%），请查看上面的信息。
pause
exit /b %RC%

:run_tests
"%VPY%" -m pytest %ARGS%
exit /b %ERRORLEVEL%

:install_failed
echo.
echo Installing the dependencies failed; see the messages above.
echo Check your internet connection, then run start.bat again.
echo 安装依赖失败，请查看上面的信息。检查网络连接后重新运行 start.bat。
echo.
if not "%MODE%"=="dev" pause
exit /b 1

rem ---- subroutine: torch (CPU build) ----------------------------------------
:install_torch
rem Already the pinned version (any build, e.g. 2.13.0+cpu)? Nothing to do.
"%VPY%" -c "import importlib.metadata as m, sys; sys.exit(0 if m.version('torch').split('+')[0] == '%TORCH_VERSION%' else 1)" >nul 2>&1
if not errorlevel 1 exit /b 0
echo [qwen-chat] Installing PyTorch %TORCH_VERSION% (CPU build) from %TORCH_CPU_INDEX%
rem --no-deps: only torch itself comes from the CPU index; its dependencies come with requirements.txt.
"%VPY%" -m pip install %PIPOPT% --no-deps --timeout 15 --retries 1 --index-url %TORCH_CPU_INDEX% torch==%TORCH_VERSION%
if not errorlevel 1 exit /b 0
echo [qwen-chat] Could not get torch from the PyTorch CPU index, see above; installing torch==%TORCH_VERSION% from the default index instead
"%VPY%" -m pip install %PIPOPT% torch==%TORCH_VERSION%
exit /b
