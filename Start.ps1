# Starts mlsharp's web page: installs it on the first run (scripts\setup.ps1), runs
# `mlsharp serve` and opens http://127.0.0.1:8000/ in the browser once it answers.
# Double-click Start.bat, or run: powershell -ExecutionPolicy Bypass -File Start.ps1
# Extra arguments go to `mlsharp serve` (e.g. -- --preset tiny --checkpoint tiny.pt).
# For Windows PowerShell 5.1 and PowerShell 7; not yet run on Windows (CI parses it).
$ErrorActionPreference = 'Stop'
Set-Location $PSScriptRoot
$mlsharp = Join-Path $PSScriptRoot '.venv\Scripts\mlsharp.exe'

if (-not (Test-Path $mlsharp)) {
    Write-Host 'First start: installing mlsharp into .venv (several minutes)...'
    & (Join-Path $PSScriptRoot 'scripts\setup.ps1')
    if (-not (Test-Path $mlsharp)) {
        Read-Host 'The installation failed (see above). Press Enter to close'
        exit 1
    }
}

$port = if ($env:MLSHARP_PORT) { $env:MLSHARP_PORT } else { '8000' }
$page = "http://127.0.0.1:$port/"
# The first start downloads the 2.8 GB weights before serving: wait up to an hour.
$opener = Start-Job -ArgumentList $page -ScriptBlock {
    param($url)
    for ($i = 0; $i -lt 3600; $i++) {
        try {
            Invoke-WebRequest -UseBasicParsing -TimeoutSec 2 -Uri ($url + 'v1/health') | Out-Null
            Start-Process $url
            return
        } catch {
            Start-Sleep -Seconds 1
        }
    }
}

Write-Host "Starting mlsharp on $page (close this window or press Ctrl+C to stop)"
& $mlsharp serve --host 127.0.0.1 --port $port @args
$code = $LASTEXITCODE
Stop-Job $opener -ErrorAction SilentlyContinue
Remove-Job $opener -Force -ErrorAction SilentlyContinue
if ($code -ne 0) { Read-Host "mlsharp stopped (exit code $code). Press Enter to close" }
exit $code
