# Creates .venv and installs mlsharp into it: the Windows counterpart of scripts/setup.sh,
# for Windows PowerShell 5.1 and PowerShell 7. Idempotent: run it again after an update.
#
#   powershell -ExecutionPolicy Bypass -File scripts\setup.ps1          # mlsharp
#   powershell -ExecutionPolicy Bypass -File scripts\setup.ps1 -Dev     # + the test tools
#
# torch comes first: the CUDA build when an NVIDIA GPU is present (PyPI's Windows wheels are
# CPU-only), the CPU build otherwise. Choose another with $env:TORCH_SPEC and
# $env:TORCH_INDEX_URL, as for setup.sh. The Python is $env:PYTHON, else the newest 3.10+
# that the py launcher or PATH offers.
# Not yet run on Windows: the project's CI parses this file (tests/test_setup_scripts.py).
param([switch]$Dev)
$ErrorActionPreference = 'Stop'
Set-Location (Split-Path -Parent $PSScriptRoot)
$env:PIP_DISABLE_PIP_VERSION_CHECK = '1'
$venvPython = Join-Path (Get-Location) '.venv\Scripts\python.exe'

function Test-Python([string[]]$Command) {
    # True when the command runs a Python 3.10 or newer.
    $exe, $rest = $Command
    if (-not (Get-Command $exe -ErrorAction SilentlyContinue)) { return $false }
    & $exe @rest -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>$null
    return ($LASTEXITCODE -eq 0)
}

function Find-Python {
    if ($env:PYTHON) { return ,@($env:PYTHON) }
    foreach ($version in '3.13', '3.12', '3.11', '3.10') {
        if (Test-Python @('py', "-$version")) { return ,@('py', "-$version") }
    }
    if (Test-Python @('python')) { return ,@('python') }
    return $null
}

function Get-GpuNames {
    try { return @(Get-CimInstance Win32_VideoController | ForEach-Object { $_.Name }) }
    catch { return @() }
}

if (-not (Test-Path $venvPython)) {
    $python = Find-Python
    if ($null -eq $python -or -not (Test-Python $python)) {
        Write-Host 'mlsharp needs Python 3.10 or newer, and none was found.' -ForegroundColor Red
        Write-Host '  Install Python 3.12 from https://www.python.org/downloads/windows/'
        Write-Host '  (or: winget install Python.Python.3.12), then run this script again.'
        exit 1
    }
    Write-Host "Creating .venv with $($python -join ' ')"
    $exe, $rest = $python
    & $exe @rest -m venv .venv
    if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
}

& $venvPython -c 'import torch' 2>$null
if ($LASTEXITCODE -ne 0) {
    $spec = if ($env:TORCH_SPEC) { $env:TORCH_SPEC } else { 'torch==2.13.0' }
    $index = $env:TORCH_INDEX_URL
    $gpus = Get-GpuNames
    if (-not $index) {
        if ($gpus -match 'NVIDIA') {
            $index = 'https://download.pytorch.org/whl/cu128'
            Write-Host "NVIDIA GPU found ($($gpus -join ', ')): installing torch's CUDA build."
        } else {
            $index = 'https://download.pytorch.org/whl/cpu'
            if ($gpus -match 'AMD|Radeon|Intel|Arc|Qualcomm|Adreno|Snapdragon') {
                Write-Host "GPU found ($($gpus -join ', ')): torch on Windows cannot use it, so"
                Write-Host 'mlsharp runs on the CPU here. See docs/install.md for the other runtimes.'
            }
        }
    }
    Write-Host "Installing $spec from $index (a large download)..."
    & $venvPython -m pip install -q $spec --index-url $index
    if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
}

$target = if ($Dev) { '.[dev]' } else { '.' }
& $venvPython -m pip install -q -e $target
if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
$version = & (Join-Path (Get-Location) '.venv\Scripts\mlsharp.exe') --version
Write-Host "mlsharp installed in .venv ($version). Next: .\.venv\Scripts\mlsharp.exe doctor"
