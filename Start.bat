@echo off
rem Double-click to start mlsharp: installs it on the first run, then opens the page.
rem Runs Start.ps1 with Windows PowerShell (the execution policy is bypassed for it only).
powershell.exe -NoProfile -ExecutionPolicy Bypass -File "%~dp0Start.ps1" %*
if errorlevel 1 pause
